"""Time ``genevolve world build`` (the issue's target: 2,000 requests in under 2 minutes on 2 cores).

    python benchmarks/world_build.py [--total 2000] [--wiki] [--out /tmp/world-bench]

Prints the wall time of each build phase (generate, library, gt_images, write, expert), the process
CPU time and the per-request cost. Run it twice: the first run also fills the shared caches
(rasterised OpenMoji pictures, the text index of the world's corpus); the second shows a warm build.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=2000)
    ap.add_argument("--wiki", action="store_true", help="also index the Wikipedia summaries (as the default build)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/world-bench"))
    args = ap.parse_args()
    from genevolve.world.build import build_world

    bench = max(16, args.total // 10)
    sizes = {"bench": bench, "rl": (args.total - bench) // 2, "sft": args.total - bench - (args.total - bench) // 2}
    if args.out.exists():
        shutil.rmtree(args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    manifest = build_world(args.out, seed=0, sizes=sizes, wiki=args.wiki)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"requests": manifest["n_requests"], "sizes": sizes, "wiki": args.wiki, "cores": os.cpu_count(),
                      "wall_s": round(wall, 1), "cpu_s_main": round(cpu, 1),
                      "cpu_s_workers": round(children.ru_utime + children.ru_stime, 1),
                      "ms_per_request": round(1000 * wall / max(1, manifest["n_requests"]), 1),
                      "phases_s": manifest["timings"], "gt_dropped": manifest["n_gt_dropped"],
                      "load_average": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()

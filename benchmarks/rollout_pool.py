"""Seconds per rollout step: one GroupSampler vs RolloutPool (local, Ray) on a tiny offline environment.

    python benchmarks/rollout_pool.py [--tasks 8] [--k 6] [--latency 0.2] [--concurrency 8] [--no-ray]

The policy answers after ``latency`` seconds per call (standing in for an inference server), the
renderer is the collage, the judge the heuristic one without embeddings. Each configuration samples
the same step twice and reports the second (warm) run; the first run's time includes building the
workers (for Ray: starting the actors). All configurations must return identical groups; the script
checks that and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from genevolve.evolve.groups import Task
from genevolve.evolve.workers import EnvSpec, RolloutPool, build_sampler
from genevolve.policy.base import Policy
from genevolve.protocol import ToolCall, format_turn
from genevolve.render.collage import CollageRenderer
from genevolve.types import Program, Reference

HERE = Path(__file__).resolve().parent


class LatencyPolicy(Policy):
    """Two calls per rollout (an image search, then an answer picked by the seed), each after ``latency`` s."""

    def __init__(self, latency: float = 0.2, model: str = "base") -> None:
        self.latency, self.model, self.name = latency, model, f"openai:{model}"

    async def achat(self, turns, *, sampling, constraint=None):
        await asyncio.sleep(self.latency)
        if not any(t.kind == "tool_response" for t in turns):
            return format_turn("look", tool_call=ToolCall("image_search", {"query": "apple"}))
        count = ["One", "Two", "Three", "Four"][sampling.seed % 4]
        return format_turn("done", answer={
            "gen_prompt": f'{count} red apples from the first reference image on the left, a sign reads "FRESH".',
            "reference_images": [{"img_id": "IMG_001", "note": "apple"}]})


def environment(root: Path, args: argparse.Namespace) -> tuple[dict, list[Task]]:
    folder = root / "images"
    folder.mkdir()
    Image.new("RGB", (96, 96), (220, 20, 20)).save(folder / "red_apple.png")
    gt = root / "gt.png"
    CollageRenderer(256, 256).render(Program(
        gen_prompt='Three red apples from the first reference image on the left, a sign reads "FRESH".',
        references=[Reference(img_id="IMG_001", path=str(folder / "red_apple.png"))])).image.save(gt)
    spec = {
        "policy": {"kind": "rollout_pool:LatencyPolicy", "latency": args.latency},
        "image_search": {"kind": "local", "folders": [str(folder)], "openmoji": False, "semantic_fallback": False,
                         "cache_dir": str(root / "cache")},
        "knowledge": False,
        "renderer": {"kind": "collage", "width": 256, "height": 256},
        "judge": {"kind": "heuristic", "embeddings": False},
        "agent": {"max_policy_calls": 3, "structured_decoding": False},
        "k": args.k, "alpha": 0.0, "concurrency": args.concurrency,
    }
    tasks = [Task(f"t{i}", f"{i % 4 + 1} red apples on the left and a sign that reads FRESH", str(gt))
             for i in range(args.tasks)]
    return spec, tasks


def prompts(groups) -> list[list[str]]:
    return [[f"{r.reward.value:.4f} {r.trajectory.program.gen_prompt if r.trajectory.program else ''}" for r in g]
            for g in groups]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec, tasks = environment(root, args)
        n = args.tasks * args.k
        print(f"{args.tasks} tasks x k={args.k} = {n} rollouts, 2 policy calls each at {args.latency:g} s, "
              f"{args.concurrency} in flight per worker, {os.cpu_count()} CPUs")
        reference = None

        def report(label: str, cold: float, warm: float, groups) -> None:
            nonlocal reference
            same = "same groups" if reference is None or prompts(groups) == reference else "GROUPS DIFFER"
            reference = reference or prompts(groups)
            print(f"{label:<22} first {cold:6.2f} s   warm {warm:6.2f} s   {n / warm:5.1f} rollouts/s   {same}")

        start = time.perf_counter()
        sampler = build_sampler(EnvSpec.model_validate({**spec, "images_dir": str(root / "direct")}))
        groups = asyncio.run(sampler.sample(tasks, step=1))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        groups = asyncio.run(sampler.sample(tasks, step=1))
        report("GroupSampler", cold, time.perf_counter() - start, groups)

        configs = [("local", 1), ("local", 2)] + ([] if args.no_ray else [("ray", 2)])
        for backend, workers in configs:
            if backend == "ray":
                import ray

                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}})
            start = time.perf_counter()
            pool = RolloutPool({**spec, "images_dir": str(root / f"{backend}{workers}")},
                               {"backend": backend, "workers": workers})
            groups = pool.sample(tasks, step=1)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            groups = pool.sample(tasks, step=1)
            report(f"pool {backend} x{workers}", cold, time.perf_counter() - start, groups)
            pool.close()


if __name__ == "__main__":
    main()

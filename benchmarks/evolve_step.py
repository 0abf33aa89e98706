"""Seconds per RL step by phase, the teacher pass's cost, and peak memory, on an evolve config.

    python benchmarks/evolve_step.py [--config configs/world-tiny.yaml] [--steps 2] [--out /tmp/evolve-bench]

Runs ``--steps`` steps of ``genevolve evolve`` into a fresh folder (the config's model, or its
``init_from`` when that folder exists) and prints each phase's seconds. Then, on the last step's rows,
it times the teacher pass (no-grad forward of every row under a decision-guide system prompt) against
the student forward + backward of the same rows, which is the issue's target (ratio <= 0.5).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path


def main() -> None:
    from genevolve.evolve.learner import Row
    from genevolve.evolve.loop import EvolveRun
    from genevolve.evolve.rl_config import load_evolve_config
    from genevolve.evolve.rollout import Rollout
    from genevolve.evolve.tokens import collate, token_logps

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/world-tiny.yaml")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default="/tmp/evolve-bench")
    args = ap.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)
    cfg = load_evolve_config(args.config, {"evolve": {"out": args.out, "steps": args.steps, "save_every": 10_000,
                                                      "tensorboard": False}})
    if cfg.evolve.init_from and not Path(cfg.evolve.init_from).is_dir():
        print(f"{cfg.evolve.init_from} does not exist: timing the config's model from scratch")
        cfg.evolve.init_from = None
    t = time.perf_counter()
    run = EvolveRun(cfg, config_dir=Path(args.config).parent, progress=False)
    print(f"build: {time.perf_counter() - t:.1f} s")
    metrics = run.run()
    phases = sorted({k for m in metrics for k in m["seconds"]})
    print(f"\n{'step':>4} " + " ".join(f"{p:>9}" for p in phases) + f" {'total':>8} {'rows':>5} {'tok/s':>7}")
    for m in metrics:
        s = m["seconds"]
        print(f"{m['step']:>4} " + " ".join(f"{s.get(p, 0):>9.1f}" for p in phases)
              + f" {sum(s.values()):>8.1f} {m['rows']:>5} {m.get('tokens_per_s', 0):>7.0f}")

    # teacher pass vs student forward + backward, same rows, every row with a guide
    groups: dict[int, list] = {}
    for line in (Path(args.out) / "trajectories.jsonl").read_text().splitlines()[-cfg.evolve.k * cfg.evolve.requests_per_step:]:
        r = Rollout.from_json(line)
        groups.setdefault(r.group, []).append(r)
    guide = run.agent.system_prompt_with(
        "Applies to: requests naming a subject indirectly\n\nSearch strategy:\n- Resolve the hidden subject with "
        "one focused search before looking for pictures of it.\n\nReference selection:\n- Pick the picture whose "
        "title names the resolved subject exactly, not a look-alike.")
    rows = []
    for group in groups.values():
        for r in group:
            try:
                rows.append(Row(run.encoder.view(r.trajectory), run.encoder.view(r.trajectory, system=guide), 0.0))
            except ValueError:
                continue
    learner, model = run.learner, run.tm.model
    t = time.perf_counter()
    learner._logps(model, [r.teacher for r in rows])
    teacher_s = time.perf_counter() - t
    model.train()
    t = time.perf_counter()
    for i in range(0, len(rows), cfg.evolve.micro_batch):
        batch = collate([r.view for r in rows[i:i + cfg.evolve.micro_batch]], run.tm.pad_id)
        token_logps(model, batch).sum().backward()
    student_s = time.perf_counter() - t
    model.zero_grad(set_to_none=True)
    print(f"\nteacher pass {teacher_s:.1f} s vs student forward+backward {student_s:.1f} s on {len(rows)} rows: "
          f"ratio {teacher_s / student_s:.2f} (target <= 0.5)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()

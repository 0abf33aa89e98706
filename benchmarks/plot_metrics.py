"""Plot an evolve run's reward per step (mean with the spread across rollouts, and the best rollout), and
its held-out evaluations when the run has an eval.jsonl.

    python benchmarks/plot_metrics.py runs/world-tiny/evolve [--out reward.png]

Reads RUN/metrics.jsonl (one line per step) and writes a PNG (needs matplotlib: the `train` extra).
Also prints the table it plotted, so the numbers can be quoted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default RUN/reward.png)")
    ap.add_argument("--window", type=int, default=5, help="steps in the trailing mean also drawn (1: none)")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in rows]
    mean = [r["reward"] for r in rows]
    std = [r["reward_std"] for r in rows]
    best = [r["reward_max"] for r in rows]
    print(f"{'step':>4} {'reward':>7} {'std':>6} {'max':>5} {'pairs':>5} {'bundles':>7} {'failures'}")
    for r in rows:
        print(f"{r['step']:>4} {r['reward']:>7.3f} {r['reward_std']:>6.3f} {r['reward_max']:>5.2f} {r['pairs']:>5} "
              f"{r.get('bundle_fraction', 0):>7.0%} {r['failures']}")
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    ax.plot(steps, mean, label="mean reward", color="C0")
    ax.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                    [m + s for m, s in zip(mean, std, strict=True)], color="C0", alpha=0.2, label="± std over rollouts")
    ax.plot(steps, best, label="best rollout", color="C1", linestyle="--")
    if args.window > 1:
        from genevolve.evolve.analysis import moving_average

        ax.plot(steps, moving_average(mean, args.window), color="C2", linewidth=2,
                label=f"mean reward, trailing {args.window}-step mean")
    evals = []
    if (args.run / "eval.jsonl").is_file():  # evolve.eval: held-out requests, the same seeds every time
        evals = [json.loads(line) for line in (args.run / "eval.jsonl").read_text().splitlines() if line.strip()]
        # an evaluation "after step s" scores the policy that step s's update produced: draw it at s + 1
        ax.plot([e["step"] + 1 for e in evals], [e["reward"] for e in evals], color="C3", marker="o", linewidth=2,
                label=f"held-out evaluation ({evals[0]['rollouts']} rollouts, fixed seeds)")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_title(str(args.run))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = args.out or args.run / "reward.png"
    fig.savefig(out)
    print(f"wrote {out}")
    if evals:
        print("held-out evaluation (after step: reward): " + ", ".join(f"{e['step']}: {e['reward']:.3f}" for e in evals))
    third = max(1, len(mean) // 3)
    print("mean reward by thirds of the run: " + ", ".join(
        f"steps {steps[i]}-{steps[min(i + third, len(steps)) - 1]}: {sum(mean[i:i + third]) / len(mean[i:i + third]):.3f}"
        for i in range(0, len(mean), third)))


if __name__ == "__main__":
    main()

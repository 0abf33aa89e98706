"""Compare evolve runs with a frozen control, step by step.

    python benchmarks/paired_reward.py CONTROL RUN [RUN ...] [--metric policy_calls] [--out paired.png]

CONTROL is the same config run with ``lr: 1e-12`` (the SFT policy, never changed). Runs of one config and
seed draw the same requests with the same sampling seeds, so a step's reward difference to the control
measures the policy rather than the requests that step happened to draw. Prints, per run, the mean
difference with its standard error, the mean by thirds, the steps above and below the control with a
sign-test p-value, and draws the running mean of the difference (needs matplotlib: the `train` extra).
``--metric`` compares another number of the step records instead (``policy_calls``, ``program_score``, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genevolve.evolve.analysis import paired_difference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("control", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--metric", default="reward", help="step metric to compare (default: reward)")
    ap.add_argument("--out", type=Path, default=None, help="PNG of the running mean difference (default: none)")
    args = ap.parse_args()

    results = {run: paired_difference(run, args.control, args.metric) for run in args.runs}
    print(f"control {args.control}, {args.metric}")
    print(f"{'run':<40} {'steps':>9} {'mean diff':>17} {'by thirds':>23} {'above':>5} {'below':>5} {'sign p':>7}")
    for run, p in results.items():
        thirds = " ".join(f"{x:+.3f}" for x in p.parts(3))
        print(f"{str(run):<40} {p.steps[0]:>4}-{p.steps[-1]:<4} {p.mean:>+8.3f} ± {p.sem:.3f} {thirds:>23} "
              f"{p.wins:>5} {p.losses:>5} {p.sign_p:>7.3f}")
    if args.out is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    for run, p in results.items():
        running = [sum(p.diffs[: i + 1]) / (i + 1) for i in range(len(p.diffs))]
        ax.plot(p.steps, running, label=f"{run.parent.name if run.name == 'evolve' else run.name}")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(f"running mean of {args.metric} − control")
    ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

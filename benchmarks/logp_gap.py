"""The learner-sampler log-prob check on real rollouts: a few `genevolve evolve` steps, their gap printed.

    python benchmarks/logp_gap.py --world worlds/w0 --policy adapter [--steps 3]
    python benchmarks/logp_gap.py --world worlds/w0 --policy world-tiny --init runs/world-tiny/sft/final

``adapter``: SmolLM2-135M (the embedded model) with the bundled world adapter, trained further as LoRA;
``world-tiny``: configs/world-tiny.yaml's model started from an SFT folder. Both sample under the protocol
grammar on the world's tools. Each step's old-policy pass is compared with the log-probs the sampler
recorded (``evolve.sampler_logps.check_every: 2`` here, so the run shows check steps and reuse steps).
Prints, per step, the gap (mean, max, share over 1e-3, tokens compared), whether the pass was skipped,
and the pass's seconds (or those it saved). On a CPU in float32 the gap should be under 1e-4.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def config(args: argparse.Namespace) -> dict:
    world = Path(args.world).resolve()
    evolve = {"data": str(world / "rl.jsonl"), "out": args.out, "steps": args.steps, "requests_per_step": 1, "k": 2,
              "program_judge": {"kind": "world-sufficiency", "world": str(world)}, "lr": 1e-4, "kl_coef": 0.0,
              "concurrency": 1, "sample_threads": 2, "micro_batch": 1, "think_max_chars": 160,
              "ved": {"form": "kl"}, "experience": {"extractor": {"kind": "rules"}},
              "sampler_logps": {"check_every": 2}, "tensorboard": False, "save_every": 100}
    env = {"from": str(world / "config.yaml"),
           "agent": {"structured_decoding": True, "prompt": "compact", "grounded_queries": True,
                     "max_policy_calls": 4, "max_tool_calls": 3, "sampling": {"max_tokens": 128}}}
    if args.policy == "adapter":
        model = {"path": "embedded", "adapter": str(ROOT / "src/genevolve/adapters/smollm2-world")}
    else:
        base = yaml.safe_load((ROOT / "configs/world-tiny.yaml").read_text())
        model = {**base["model"], "path": str(world / "tokenizer")}
        evolve["init_from"] = args.init
    return {"model": model, "env": env, "evolve": evolve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="worlds/w0")
    ap.add_argument("--policy", choices=("adapter", "world-tiny"), default="adapter")
    ap.add_argument("--init", help="world-tiny: an SFT output folder (its final/)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.policy == "world-tiny" and not args.init:
        ap.error("--policy world-tiny needs --init (a `genevolve sft` output folder)")
    args.out = args.out or f"runs/logp-gap-{args.policy}"
    from genevolve.evolve.loop import EvolveRun
    from genevolve.evolve.rl_config import EvolveFile

    run = EvolveRun(EvolveFile.model_validate(config(args)), progress=False)
    run.run()
    keys = ("logp_gap_mean", "logp_gap_max", "logp_gap_frac_over_1e-3", "logp_gap_tokens", "logp_reused")
    print(f"{args.policy}: {run.tm.model.__class__.__name__}, out {args.out}")
    for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        sec = m["seconds"]
        shown = {k: m.get(k) for k in keys}
        print(f"step {m['step']}: {json.dumps(shown)}  old pass {sec.get('old', 0):.2f} s"
              + (f" (saved {sec['old_saved']:.2f} s)" if "old_saved" in sec else ""))


if __name__ == "__main__":
    main()

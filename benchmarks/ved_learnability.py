"""GRPO against VED on the synthetic swatch task (tests/learnability.py), from a warm start that reads its guide.

    python benchmarks/ved_learnability.py --out runs/ved-learnability --seeds 0 1 2

Per seed:
1. **Warm start.** `run_sft` on rows that teach guide-following only (``warm_start_rows``): under the plain
   prompt, a random phrase and a random image (a student at chance); under the teacher's prompt (the lesson
   as its decision guide), the colour word and the first image.
2. **Guide-following.** On held-out requests (sentences not trained on), the teacher's log-prob of the guided
   rollout's tokens minus the student's, summed per rollout; positive: the teacher prefers the guided action.
3. **Arms.** The same warm start, requests and sampling seeds: GRPO (``ved.form: none``) and VED forms, whose
   memory holds the lesson (``ColourLesson`` extractor, gate open). Held-out reward every ``--every`` steps.
4. **Rollouts to match.** For each VED arm, the rollouts trained on before its first evaluation at or above
   GRPO's final one (none: it never got there).

Prints a table and writes OUT/results.json. Rerunning resumes: a finished warm start and finished arms are
reused, a stopped arm resumes from its checkpoint. One core per run is plenty (a tiny model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = {
    "grpo": {"ved": {"form": "none"}},
    "ved-gated": {"ved": {"form": "gated"}},
    "ved-kl": {"ved": {"form": "kl"}},  # the paper's lambda 2
    "ved-kl-0.5": {"ved": {"form": "kl", "lam": 0.5}},
    "ved-advantage": {"ved": {"form": "advantage"}},
}


def guide_following(folder: Path, model_dir: Path) -> float:
    """Mean over held-out guided rollouts of sum(teacher log-prob - student log-prob) over their tokens."""
    import torch

    from genevolve.config import build_agent, load_config
    from genevolve.evolve.model import load_model
    from genevolve.evolve.tokens import ChatEncoder, collate, token_logps
    from genevolve.evolve.train_config import ModelSpec
    from genevolve.sft_rows import trajectory_from_sft_row
    from tests import learnability as L

    path = L.warm_start_rows(folder, folder / "library", per_request=1, wordings=L.EVAL_WORDINGS, name="held_out")
    agent = build_agent(load_config(None, L.env_config(folder / "library")))
    tm = load_model(ModelSpec(path=str(model_dir)))
    encoder = ChatEncoder(tm.tokenizer, None)
    gaps = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["messages"][0]["content"] == agent.system_prompt:
            continue  # an unguided row: its action is random
        row["messages"][0]["content"] = agent.system_prompt
        turns = trajectory_from_sft_row(row).turns
        student = encoder.view(turns)
        teacher = encoder.view(turns, system=L.teacher_prompt(agent))
        with torch.no_grad():
            s, t = (token_logps(tm.model, collate([v], tm.tokenizer.pad_token_id or 0))[0] for v in (student, teacher))
        s_pos = [i for i, m in enumerate(student.mask) if m]
        t_pos = [i for i, m in enumerate(teacher.mask) if m]
        gaps.append(float(sum(t[b] - s[a] for a, b in zip(s_pos, t_pos, strict=True))))
    return statistics.fmean(gaps)


def run_arm(folder: Path, name: str, model_dir: Path, seed: int, steps: int, every: int, lr: float) -> dict:
    from genevolve.evolve.loop import EvolveRun
    from tests import learnability as L

    out = folder / name
    settings = dict(ARMS[name], init_from=str(model_dir), steps=steps, lr=lr, seed=seed,
                    eval={"every": every, "k": 4, "data": str(folder / "data" / "eval.jsonl")},
                    experience={"extractor": {"kind": "tests.learnability:ColourLesson"}, "threshold": -1.0})
    t = time.perf_counter()
    run = EvolveRun(L.swatch_config(folder, out, **settings), progress=False)
    run.resume()
    run.run()
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"eval_steps": [e["step"] for e in evals], "eval": [e["reward"] for e in evals],
            "train": [m["reward"] for m in metrics], "gap": [m.get("teacher_student_gap") for m in metrics],
            "rollouts_per_step": run.ev.requests_per_step * run.ev.k, "seconds": round(time.perf_counter() - t, 1)}


def rollouts_to_match(arm: dict, target: float) -> int | None:
    for step, reward in zip(arm["eval_steps"], arm["eval"], strict=True):
        if reward >= target - 1e-9:
            return (step + 1) * arm["rollouts_per_step"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ved-learnability"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--sft-epochs", type=float, default=12.0)
    args = parser.parse_args()
    from tests import learnability as L

    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}  # other seeds' results stay
    for seed in args.seeds:
        folder = args.out / f"seed{seed}"
        model_dir = L.warm_start(folder, seed=seed, epochs=args.sft_epochs)
        entry = {"guide_following": guide_following(folder, model_dir), "arms": {}}
        for name in args.arms:
            entry["arms"][name] = run_arm(folder, name, model_dir, seed, args.steps, args.every, args.lr)
        target = entry["arms"].get("grpo", {}).get("eval", [None])[-1]
        for arm in entry["arms"].values():
            arm["rollouts_to_match_grpo"] = None if target is None else rollouts_to_match(arm, target)
        results[str(seed)] = entry
        print(f"seed {seed}: teacher - student log-prob of the guided rollout {entry['guide_following']:+.2f}")
        for name, arm in entry["arms"].items():
            curve = " ".join(f"{r:.2f}" for r in arm["eval"])
            print(f"  {name:14s} held-out {curve}   rollouts to match GRPO's final: {arm['rollouts_to_match_grpo']}"
                  f"   ({arm['seconds']:.0f} s)")
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

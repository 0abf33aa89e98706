"""The paper's ablation in the offline world: untuned -> SFT -> SFT + GRPO -> SFT + GRPO + VED, with seeds.

    python benchmarks/ablation.py [--world worlds/w0] [--out runs/ablation] [--quick]

Arms (every one uses the policy model of ``--config``, by default configs/world-tiny.yaml: a 2-layer
Llama trained from scratch on the world with the world's own tokenizer, the compact prompt,
structured decoding and grounded image queries):

    untuned   the randomly initialised model under the protocol grammar, no training
    sft       SFT on the world's expert trajectories (the config's `sft` section)
    grpo      sft, then `genevolve evolve` with ved.form none
    ved_kl    sft, then evolve with the paper's VED loss (ved.form kl)
    ved_adv   sft, then evolve with the sampled-token advantage form (ved.form advantage)
    frozen    sft, then evolve with lr 1e-12: the control. It draws the same requests with the same seeds
              as the RL arms of its seed, so each RL arm's reward minus its is the policy's doing, not
              the draw's (no benchmark run: it is the SFT policy)

Every RL arm of a seed starts from that seed's SFT model and spends the same rollouts (steps x
requests_per_step x k). Each arm is evaluated with `genevolve bench` and the world judge on a fixed,
stratified subset of the world's benchmark split (the same items for every arm and seed; nothing is
tuned on it). Seeds change the initialisation, the data order, the RL request order and every
sampling seed.

Every stage is a plain CLI call (`genevolve sft`, `genevolve evolve`, `genevolve bench`) with its own
config under OUT/configs/, so a stopped ablation resumes where it stopped when rerun, and any stage can
be rerun by hand. OUT/results.json holds every number; OUT/results.md the table, the rollouts-to-match
figure, wall times and the teacher's token pushes; OUT/curves.png the learning curves.

Sizes (full / --quick): 3 / 1 seeds, SFT 1 epoch / 12 steps, 16 / 2 RL steps of 2 requests x 4
rollouts, 1 benchmark item per category (16 items). These fit about 100 minutes on 2 cores (90 for a
full run before the frozen arm was added); docs/results.md reports one. A missing world is built (seed 0, 4,000 SFT rows) and a config
whose model.path is a world's tokenizer folder gets ``--world``'s (fitted when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ARMS = ("untuned", "sft", "grpo", "ved_kl", "ved_adv")
RL_FORMS = {"grpo": "none", "ved_kl": "kl", "ved_adv": "advantage"}
CONTROL = "frozen"  # an RL arm that does not learn (lr 1e-12), for paired comparisons
DIMS = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")
TRACKS = ("knowledge", "quality")

FULL = {"seeds": [0, 1, 2], "sft_epochs": 1.0, "sft_max_steps": None, "steps": 16, "requests_per_step": 2, "k": 4,
        "per_category": 1}
QUICK = {"seeds": [0], "sft_epochs": 1.0, "sft_max_steps": 12, "steps": 2, "requests_per_step": 2, "k": 4,
         "per_category": 1}


# -- stages ------------------------------------------------------------------------------------------


class Ablation:
    def __init__(self, args: argparse.Namespace, sizes: dict[str, Any]) -> None:
        self.args, self.sizes = args, sizes
        self.arms = args.arms
        self.rl_arms = [a for a in RL_FORMS if a in self.arms]
        self.out = Path(args.out).resolve()
        self.world = Path(args.world).resolve()
        self.base = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
        self.timings_path = self.out / "timings.json"
        self.lock = threading.Lock()
        self.timings: dict[str, float] = (json.loads(self.timings_path.read_text())
                                          if self.timings_path.is_file() else {})

    def timed(self, key: str, done: bool, cmd: list[str]) -> None:
        """Run ``cmd`` unless ``done`` (its output to OUT/logs/KEY.log); record its wall time under ``key``
        (kept across resumes). Children get ``--threads`` torch threads: for a model this small, one
        thread per job beats two threads fighting over two cores by far."""
        if done:
            print(f"[done] {key}", flush=True)
            return
        log = self.out / "logs" / f"{key.replace('/', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[run ] {key}: {' '.join(cmd)} > {log}", flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(self.args.threads)}
        t = time.perf_counter()
        with open(log, "a") as fh:
            result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{key} failed (exit {result.returncode}); see {log}")
        seconds = time.perf_counter() - t
        print(f"[ok  ] {key}: {seconds:.0f} s", flush=True)
        with self.lock:
            self.timings[key] = self.timings.get(key, 0.0) + seconds
            self.timings_path.write_text(json.dumps(self.timings, indent=1))

    def eval_items(self) -> Path:
        """A stratified subset of the benchmark split: ``per_category`` items of each category, picked
        with a fixed seed that no training seed changes. Written into the world folder, because GT image
        paths are relative to the data file's folder."""
        path = self.world / f"bench.ablation-{self.sizes['per_category']}.jsonl"
        if not path.is_file():
            rows = [json.loads(x) for x in (self.world / "bench.jsonl").read_text().splitlines() if x.strip()]
            by_cat: dict[str, list[dict]] = {}
            for row in rows:
                by_cat.setdefault(row["category"], []).append(row)
            picked = []
            for cat in sorted(by_cat):
                group = sorted(by_cat[cat], key=lambda r: r["id"])
                random.Random(f"eval|{cat}").shuffle(group)
                picked.extend(group[: self.sizes["per_category"]])
            path.write_text("".join(json.dumps(r) + "\n" for r in picked))
        return path

    def env(self) -> dict[str, Any]:
        env = dict(self.base["env"])
        env["from"] = str(self.world / "config.yaml")
        return env

    def write_config(self, name: str, data: dict[str, Any]) -> Path:
        path = self.out / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def model_section(self, seed: int) -> dict[str, Any]:
        model = {**self.base["model"], "seed": seed}
        if Path(model.get("path", "")).name == "tokenizer":  # a world tokenizer: this world's, fitted once
            folder = self.world / "tokenizer"
            with self.lock:
                if not (folder / "tokenizer.json").is_file():
                    from genevolve.world.tokenizer import world_tokenizer

                    world_tokenizer(self.world, folder)
            model["path"] = str(folder)
        return model

    def untuned_model(self, seed: int) -> Path:
        """The seed's random initialisation, saved as a model folder."""
        folder = self.out / f"seed{seed}" / "untuned" / "model"
        if not (folder / "model.json").is_file():
            from genevolve.evolve.model import load_model, save_model
            from genevolve.evolve.train_config import ModelSpec

            save_model(load_model(ModelSpec.model_validate(self.model_section(seed))), folder)
        return folder

    def sft(self, seed: int) -> Path:
        out = self.out / f"seed{seed}" / "sft"
        sft = {**self.base["sft"], "data": [str(self.world / "sft.jsonl")], "out": str(out), "seed": seed,
               "epochs": self.sizes["sft_epochs"]}
        if self.sizes["sft_max_steps"]:
            sft["max_steps"] = self.sizes["sft_max_steps"]
        cfg = self.write_config(f"sft-seed{seed}", {"model": self.model_section(seed), "env": self.env(), "sft": sft})
        self.timed(f"sft/{seed}/train", (out / "final" / "model.json").is_file(),
                   ["genevolve", "sft", "--config", str(cfg)])
        return out / "final"

    def evolve(self, arm: str, seed: int, init: Path) -> Path:
        from genevolve.runfolder import checkpoint_step, latest_checkpoint

        out = self.out / f"seed{seed}" / arm
        ev = dict(self.base["evolve"])
        ev.update({"data": str(self.world / "rl.jsonl"), "init_from": str(init), "out": str(out), "seed": seed,
                   "steps": self.sizes["steps"], "requests_per_step": self.sizes["requests_per_step"],
                   "k": self.sizes["k"], "tensorboard": False,
                   "eval": {"every": 0},  # the arms are compared on the benchmark and against the frozen arm
                   "concurrency": max(1, (os.cpu_count() or 1) // self.args.jobs), "sample_threads": 1,
                   "program_judge": {**ev.get("program_judge", {}), "world": str(self.world)},
                   "ved": {**ev.get("ved", {}), "form": RL_FORMS.get(arm, "none")}})
        if arm == CONTROL:
            ev["lr"] = 1e-12
        cfg = self.write_config(f"{arm}-seed{seed}", {"model": self.model_section(seed), "env": self.env(),
                                                      "evolve": ev})
        last = latest_checkpoint(out)
        done = last is not None and checkpoint_step(last) + 1 >= ev["steps"]
        self.timed(f"{arm}/{seed}/train", done, ["genevolve", "evolve", "--config", str(cfg)])
        return latest_checkpoint(out) / "model"

    def bench(self, arm: str, seed: int, model: Path) -> dict[str, Any]:
        out = self.out / f"seed{seed}" / arm / "bench"
        world_cfg = yaml.safe_load((self.world / "config.yaml").read_text())
        agent = {**world_cfg.get("agent", {}), **self.base["env"].get("agent", {})}
        think = self.base["evolve"].get("think_max_chars")
        policy = {"kind": "hf", "model": str(model), "structured": True,
                  **({"think_max_chars": think} if think else {})}
        cfg = self.write_config(f"bench-{arm}-seed{seed}", {**world_cfg, "policy": policy, "agent": agent})
        summary = out / "summary.json"
        done = summary.is_file() and json.loads(summary.read_text()).get("complete", False)
        self.timed(f"{arm}/{seed}/eval", done,
                   ["genevolve", "bench", "--data", str(self.eval_items()), "--config", str(cfg), "--out", str(out),
                    "--seed", str(seed), "--concurrency", "2"])
        return json.loads(summary.read_text())

    def run(self) -> dict[str, Any]:
        """Every stage as a task; ``--jobs`` tasks at a time, each as soon as its SFT model exists."""
        tasks: dict[str, tuple[list[str], Callable[[], Any]]] = {}
        for s in self.sizes["seeds"]:  # the SFT runs first: they are the long stages every other waits on
            tasks[f"sft/{s}/train"] = ([], lambda s=s: self.sft(s))
        for s in self.sizes["seeds"]:
            sft = f"sft/{s}/train"
            if "untuned" in self.arms:
                tasks[f"untuned/{s}"] = ([], lambda s=s: self.bench("untuned", s, self.untuned_model(s)))
            if "sft" in self.arms:
                tasks[f"sft/{s}"] = ([sft], lambda s=s: self.bench("sft", s, self.sft(s)))
            for arm in self.rl_arms:
                tasks[f"{arm}/{s}"] = ([sft], lambda s=s, arm=arm: self.bench(arm, s, self.evolve(arm, s, self.sft(s))))
            tasks[f"{CONTROL}/{s}"] = ([sft], lambda s=s: self.evolve(CONTROL, s, self.sft(s)))
        done = run_tasks(tasks, self.args.jobs)
        return {arm: {s: done[f"{arm}/{s}"] for s in self.sizes["seeds"]} for arm in self.arms}


def run_tasks(tasks: dict[str, tuple[list[str], Callable[[], Any]]], jobs: int) -> dict[str, Any]:
    """Run ``{name: (dependencies, fn)}`` on ``jobs`` threads, in the given order as dependencies allow;
    the first failure stops new tasks and is raised once the running ones end."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    results: dict[str, Any] = {}
    pending, running = dict(tasks), {}
    with ThreadPoolExecutor(jobs) as pool:
        while pending or running:
            for name, (deps, fn) in list(pending.items()):
                if len(running) < jobs and all(d in results for d in deps):
                    running[pool.submit(fn)] = name
                    del pending[name]
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                results[running.pop(future)] = future.result()
    return results


# -- report ------------------------------------------------------------------------------------------


def _scores(summary: dict[str, Any]) -> dict[str, float | None]:
    """KScore (failures count 0) and the four dimensions, overall and per track."""
    out: dict[str, float | None] = {"kscore": summary["all"]["kscore_missing_zero"]}
    out.update({d: summary["all"][d] for d in DIMS})
    for track in TRACKS:
        table = summary["groups"].get("track", {}).get(track)
        out[f"{track}.kscore"] = table["kscore_missing_zero"] if table else None
    return out


def _cell(values: list[float | None]) -> str:
    from genevolve.evolve.analysis import mean_std

    xs = [v for v in values if v is not None]
    if not xs:
        return "n/a"
    m, s = mean_std(xs)
    return f"{m:.3f} ± {s:.3f}"


def report(ab: Ablation, results: dict[str, dict[int, dict[str, Any]]]) -> None:
    from genevolve.evolve.analysis import (
        mean_std,
        paired_difference,
        reward_curve,
        rollouts_to_reach,
        run_seconds,
    )

    seeds, rl_arms = ab.sizes["seeds"], ab.rl_arms
    scores = {arm: {s: _scores(results[arm][s]) for s in seeds} for arm in ab.arms}
    columns = ["kscore", *DIMS, *(f"{t}.kscore" for t in TRACKS)]
    lines = [f"| arm | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for arm in ab.arms:
        lines.append(f"| {arm} | " + " | ".join(_cell([scores[arm][s][c] for s in seeds]) for c in columns) + " |")

    curves = {arm: {s: reward_curve(ab.out / f"seed{s}" / arm) for s in seeds} for arm in (*rl_arms, CONTROL)}
    paired = {arm: [paired_difference(ab.out / f"seed{s}" / arm, ab.out / f"seed{s}" / CONTROL) for s in seeds]
              for arm in rl_arms}
    vs_control = {arm: {"mean": mean_std([p.mean for p in ps]), "above": sum(p.wins for p in ps),
                        "below": sum(p.losses for p in ps)} for arm, ps in paired.items()}
    window = max(1, ab.sizes["steps"] // 6)
    final = {arm: mean_std([sum(c[1][-window:]) / len(c[1][-window:]) for c in curves[arm].values()])
             for arm in rl_arms}
    xs = curves[CONTROL][seeds[0]][0]
    mean_curve = {arm: [sum(curves[arm][s][1][i] for s in seeds) / len(seeds) for i in range(len(xs))]
                  for arm in rl_arms}
    match = {arm: rollouts_to_reach(xs, mean_curve[arm], final["grpo"][0], window=window)
             for arm in rl_arms if arm != "grpo" and "grpo" in rl_arms}
    _plot(ab.out / "curves.png", xs, curves, window)

    wall = {}
    for arm in ab.arms:
        per_seed = []
        for s in seeds:
            run = ab.out / f"seed{s}" / arm
            train = run_seconds(run) if (run / "metrics.jsonl").is_file() else 0.0  # kept steps only: resume-proof
            per_seed.append((train, ab.timings.get(f"{arm}/{s}/eval", 0.0)))
        wall[arm] = {"train_s": mean_std([t for t, _ in per_seed]), "eval_s": mean_std([e for _, e in per_seed])}

    pushes = _pushes(ab, seeds[0]) if "ved_kl" in rl_arms else []
    data = {"sizes": ab.sizes, "scores": scores, "final_reward": final, "vs_frozen": vs_control,
            "rollouts_to_match_grpo": match,
            "rollouts_per_run": xs[-1], "curves": {a: {s: c for s, c in v.items()} for a, v in curves.items()},
            "wall_seconds": wall, "timings": ab.timings, "teacher_pushes": pushes}
    (ab.out / "results.json").write_text(json.dumps(data, indent=1, default=str))

    md = ["## Scores (mean ± std over seeds " + ", ".join(map(str, seeds)) + ")", "", *lines, "",
          f"## RL reward (mean of the last {window} steps, ± std over seeds; {xs[-1]} rollouts per run)", ""]
    md += [f"- {arm}: {final[arm][0]:.3f} ± {final[arm][1]:.3f}" for arm in rl_arms]
    md += ["", "## RL reward minus the frozen SFT policy's, step by step (same requests and sampling seeds; "
               "mean over steps, ± std over seeds; steps above / below it over all seeds)", ""]
    md += [f"- {arm}: {v['mean'][0]:+.3f} ± {v['mean'][1]:.3f} ({v['above']} above, {v['below']} below)"
           for arm, v in vs_control.items()]
    if match:
        md += ["", f"Rollouts for the seed-mean curve ({window}-step trailing mean) to reach GRPO's final reward "
                   f"{final['grpo'][0]:.3f}:", ""]
        md += [f"- {arm}: {match[arm] if match[arm] is not None else 'not reached'}" for arm in match]
    md += ["", "## Time per arm (mean over seeds, seconds): train = the steps' own time from metrics.jsonl "
               "(SFT's is shared by the RL arms; loading left out), eval = the benchmark call's wall time", "",
           "| arm | train | eval |", "|---|---|---|"]
    md += [f"| {arm} | {wall[arm]['train_s'][0]:.0f} | {wall[arm]['eval_s'][0]:.0f} |" for arm in ab.arms]
    md += ["", f"## Bundles that most change the teacher's token choices (ved_kl, seed {seeds[0]})", ""]
    for p in pushes:
        md += [f"- bundle `{p['bundle']}` (step {p['step']}, gap {p['gap']:.2f}, mean |Δlogp| {p['mean_abs']:.3f}), "
               f"trigger: {p['trigger']}", "  - guide: " + " / ".join(p["bullets"]),
               "  - pushed up: " + ", ".join(f"`{t['context']}⟨{t['token']}⟩` {t['delta']:+.2f}" for t in p["up"]),
               "  - pushed down: " + ", ".join(f"`{t['context']}⟨{t['token']}⟩` {t['delta']:+.2f}" for t in p["down"])]
    (ab.out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _plot(path: Path, xs: list[int], curves: dict[str, dict[int, tuple[list[int], list[float]]]], window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genevolve.evolve.analysis import mean_std, moving_average

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    arms = [a for a in (*RL_FORMS, CONTROL) if a in curves]
    for color, arm in zip(("C0", "C1", "C2", "grey"), arms, strict=False):
        color = "grey" if arm == CONTROL else color
        smoothed = [moving_average(c[1], window) for c in curves[arm].values()]
        stats = [mean_std([s[i] for s in smoothed]) for i in range(len(xs))]
        mean = [m for m, _ in stats]
        ax.plot(xs, mean, color=color, label=arm, linestyle="--" if arm == CONTROL else "-")
        if arm != CONTROL:
            ax.fill_between(xs, [m - s for m, s in stats], [m + s for m, s in stats], color=color, alpha=0.18)
    ax.set_xlabel("rollouts")
    ax.set_ylabel(f"mean reward ({window}-step trailing mean)")
    ax.set_title("RL arms from the same SFT start: seed mean ± std")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pushes(ab: Ablation, seed: int, top_bundles: int = 3) -> list[dict[str, Any]]:
    """Re-score, with the final ved_kl model, the worst rollout of every bundle's pair with and without
    its guide; keep the bundles with the largest mean |teacher - student| and their top tokens."""
    from genevolve.agent import agent_system_prompt
    from genevolve.evolve.analysis import teacher_pushes
    from genevolve.evolve.experience import ExperienceBundle
    from genevolve.evolve.model import load_model
    from genevolve.evolve.rollout import Rollout
    from genevolve.evolve.tokens import ChatEncoder
    from genevolve.evolve.train_config import ModelSpec, env_run_config
    from genevolve.runfolder import latest_checkpoint
    from genevolve.tools import build_tools

    run = ab.out / f"seed{seed}" / "ved_kl"
    bundles = [ExperienceBundle.model_validate_json(x) for x in (run / "experience.jsonl").read_text().splitlines()
               if x.strip()] if (run / "experience.jsonl").is_file() else []
    if not bundles:
        return []
    rollouts = {}
    for line in (run / "trajectories.jsonl").read_text().splitlines():
        if line.strip():
            r = Rollout.model_validate_json(line)
            rollouts[r.trajectory.id] = r
    tm = load_model(ModelSpec(path=str(latest_checkpoint(run) / "model")))
    encoder = ChatEncoder(tm.tokenizer, tm.processor)
    env = env_run_config(ab.env())
    tools = build_tools(search=env.search, image_search=env.image_search, knowledge=env.knowledge)
    scored = []
    for b in bundles:
        worst = rollouts.get(b.provenance.worst_id)
        if worst is None:
            continue
        up, down, mean_abs = teacher_pushes(tm.model, encoder, worst.trajectory.turns,
                                            agent_system_prompt(tools, env.agent, b.to_guide()))
        scored.append({"bundle": b.id, "step": b.provenance.step, "gap": b.provenance.gap, "mean_abs": mean_abs,
                       "trigger": b.key.trigger, "bullets": [x for slot in b.slots().values() for x in slot][:4],
                       "up": [_push(t) for t in up], "down": [_push(t) for t in down]})
    scored.sort(key=lambda d: -d["mean_abs"])
    return scored[:top_bundles]


def _push(t: Any) -> dict[str, Any]:
    return {"token": t.token.replace("\n", "⏎"), "context": t.context[-40:].replace("\n", "⏎").replace("`", "'"),
            "delta": round(t.delta, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="worlds/w0", help="a built world (genevolve world build --seed 0 --sft 4000 --out DIR)")
    ap.add_argument("--config", default="configs/world-tiny.yaml", help="model, sft, env and evolve settings")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--quick", action="store_true", help="one seed, short stages: a ~10-minute smoke run")
    ap.add_argument("--jobs", type=int, default=2, help="stages run at once (default 2: one per core)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each stage (OMP_NUM_THREADS)")
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="comma-separated seeds (default: 3 full, 1 quick)")
    ap.add_argument("--arms", type=lambda v: v.split(","), default=list(ARMS),
                    help=f"comma-separated arms of {','.join(ARMS)} (the frozen control always runs)")
    args = ap.parse_args()
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    if not (Path(args.world) / "manifest.json").is_file():
        print(f"building the world into {args.world} (about 90 s)", flush=True)
        subprocess.run(["genevolve", "world", "build", "--seed", "0", "--sft", "4000", "--out", args.world], check=True)
    sizes = QUICK if args.quick else FULL
    ab = Ablation(args, {**sizes, "seeds": args.seeds or sizes["seeds"]})
    t = time.perf_counter()
    results = ab.run()
    report(ab, results)
    print(f"\nablation: {time.perf_counter() - t:.0f} s this call; results in {ab.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Run 20 varied requests through the embedded stack and summarise how each rollout ended.

    python benchmarks/embedded_requests.py --out runs/requests             # all 20 (an hour or more on 2 cores)
    python benchmarks/embedded_requests.py --out runs/requests --limit 2   # the first two only
    python benchmarks/embedded_requests.py --out runs/requests --json requests.json

One process, one agent: the policy, tools and renderer are built once with the same calls as
``genevolve run`` (``load_config`` / ``build_agent`` / ``build_renderer``; ``--config`` for another
stack) and every request goes through ``genevolve.pipeline.solve`` into ``DIR/<i>/`` (trajectory.json,
program.json, image.png, render.json). Resumable: a request whose folder already holds trajectory.json
is read back instead of rerun (``--fresh`` reruns it). The requests are English and reachable with
emoji-like images (OpenMoji): knowledge, counting, text, layout, colours, animals, food, buildings,
vehicles, weather and sports.

Prints one line per request: stop reason, policy/tool calls, repeated calls (rep), format errors (fmt),
ovl (share of the request's content words that the gen_prompt repeats: a crude on-topic check, since
a valid program can describe something else entirely), image, seconds, violations and failure; then
totals (valid programs, images, mean seconds). Writes DIR/summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

REQUESTS: list[tuple[str, str]] = [
    ("knowledge", "The flag of Japan on a wooden pole"),
    ("knowledge", "The flag of the country whose capital is Ottawa, flying on a tall pole"),
    ("knowledge", "The animal that is a national symbol of Australia, hopping across a field"),
    ("counting", "four green apples in a row"),
    ("counting", "Three red balloons floating in a blue sky"),
    ("text", 'a sign that reads "NO PARKING"'),
    ("text", 'A birthday cake with the words "HAPPY BIRTHDAY" written on it'),
    ("layout", "a cat on the left and a dog on the right"),
    ("layout", "The sun above a small house, with a tree to the right of the house"),
    ("colours", "A purple umbrella next to a yellow taxi"),
    ("colours", "A blue butterfly resting on a pink flower"),
    ("animals", "A penguin standing on an iceberg"),
    ("animals", "An elephant and a giraffe drinking at a watering hole"),
    ("food", "A slice of pizza and a glass of orange juice on a table"),
    ("food", "A bowl of ramen with chopsticks"),
    ("buildings", "The Tokyo Tower at sunset"),
    ("buildings", "A castle on a green hill under a rainbow"),
    ("vehicles", "A red fire engine parked next to a police car"),
    ("weather", "A snowman standing in falling snow"),
    ("sports", "A soccer ball in front of a goal, with a trophy beside it"),
]
TIME_FILE = "bench.json"  # per-request wall time, so a resumed run still reports it
_FILLER = frozenset("a an the of on in at to with and next under above beside from that whose is are it its "
                    "standing written reads".split())


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2 and w not in _FILLER}


def overlap(request: str, text: str | None) -> float | None:
    """Share of the request's content words that ``text`` repeats: a crude on-topic check of the prompt,
    since a valid program can still describe something else entirely."""
    words = content_words(request)
    return None if text is None or not words else len(words & content_words(text)) / len(words)


def row_for(i: int, category: str, request: str, folder: Path, *, resumed: bool) -> dict[str, Any]:
    """One summary row, read back from the request's folder (the same path for fresh and resumed runs)."""
    traj = json.loads((folder / "trajectory.json").read_text(encoding="utf-8"))
    timing = folder / TIME_FILE
    seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else traj.get("timings", {}).get("total")
    program = traj.get("program") or {}
    return {
        "i": i, "category": category, "request": request, "folder": str(folder),
        "stop_reason": traj.get("stop_reason"), "failure": traj.get("failure"),
        "valid": bool(program) and traj.get("stop_reason") == "answer",
        "n_policy_calls": traj.get("n_policy_calls"), "n_tool_calls": traj.get("n_tool_calls"),
        "n_format_errors": traj.get("n_format_errors"), "violations": traj.get("violations", []),
        "image": (folder / "image.png").is_file(), "render_error": _render_error(traj.get("meta", {})),
        "seconds": seconds, "timings": traj.get("timings", {}), "resumed": resumed,
        "n_repeated_calls": sum(bool(c.get("repeated")) for c in traj.get("tool_calls", [])),
        "gen_prompt": program.get("gen_prompt"), "prompt_overlap": overlap(request, program.get("gen_prompt")),
        "references": [r.get("title", "") for r in program.get("references", [])],
    }


def _render_error(meta: dict[str, Any]) -> str | None:
    """The renderer's error code (``meta["score_failure"]``; folders written before it: ``meta["render_error"]``)."""
    failure = meta.get("score_failure") or {}
    return failure.get("code") if failure.get("failure") == "render_error" else meta.get("render_error")


HEADER = (f"{'#':>2s} {'category':10s} {'stop':15s} {'calls':>5s} {'rep':>3s} {'fmt':>3s} {'ovl':>4s} {'img':>3s} "
          f"{'secs':>6s}  violations / failure")


def print_row(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"{r['i']:2d} {r['category']:10s} {'CRASHED':15s} {'':>5s} {'':>3s} {'':>3s} {'':>4s} {'':>3s} "
              f"{r['seconds']:6.1f}  "
              f"{r['error']}", flush=True)
        return
    calls = f"{r['n_policy_calls']}/{r['n_tool_calls']}"
    secs = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
    ovl = "-" if r["prompt_overlap"] is None else f"{r['prompt_overlap']:.0%}"
    notes = ", ".join(r["violations"]) or ""
    if r["failure"]:
        notes = f"{notes}; {r['failure']}" if notes else r["failure"]
    if r["render_error"]:
        notes += f" [render: {r['render_error']}]"
    print(f"{r['i']:2d} {r['category']:10s} {r['stop_reason']:15s} {calls:>5s} {r['n_repeated_calls']:3d} "
          f"{r['n_format_errors']:3d} {ovl:>4s} {'yes' if r['image'] else 'no':>3s} {secs:>6s}{' (resumed)' if r['resumed'] else ''}  {notes[:110]}",
          flush=True)


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in rows if "error" not in r]
    secs = [r["seconds"] for r in done if r["seconds"] is not None]
    stops: dict[str, int] = {}
    for r in done:
        stops[r["stop_reason"]] = stops.get(r["stop_reason"], 0) + 1
    return {"n": len(rows), "crashed": len(rows) - len(done), "valid_programs": sum(r["valid"] for r in done),
            "images": sum(r["image"] for r in done), "mean_seconds": statistics.mean(secs) if secs else None,
            "stop_reasons": stops,
            "format_errors": sum(r["n_format_errors"] or 0 for r in done),
            "repeated_calls": sum(r["n_repeated_calls"] for r in done),
            "violations": sum(len(r["violations"]) for r in done),
            "mean_prompt_overlap": statistics.mean(ovl) if (ovl := [r["prompt_overlap"] for r in done
                                                                    if r["prompt_overlap"] is not None]) else None}


async def run_all(agent: Any, renderer: Any, todo: list[tuple[int, str, str]], out: Path, *, seed: int,
                  fresh: bool) -> list[dict[str, Any]]:
    from genevolve.pipeline import solve

    rows = []
    for i, category, request in todo:
        folder = out / f"{i:02d}"
        if (folder / "trajectory.json").is_file() and not fresh:
            rows.append(row_for(i, category, request, folder, resumed=True))
            print_row(rows[-1])
            continue
        start = time.perf_counter()
        try:
            await solve(agent, request, folder, renderer=renderer, seed=seed, meta={"category": category})
        except Exception as exc:  # a crash (a bug) costs one request; the trajectory is not written, so a rerun retries it
            traceback.print_exc()
            rows.append({"i": i, "category": category, "request": request, "seconds": time.perf_counter() - start,
                         "error": f"{type(exc).__name__}: {exc}"})
            print_row(rows[-1])
            continue
        (folder / TIME_FILE).write_text(json.dumps({"seconds": time.perf_counter() - start}), encoding="utf-8")
        rows.append(row_for(i, category, request, folder, resumed=False))
        print_row(rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/embedded_requests"), help="one folder per request, "
                                                                                      "plus summary.json")
    ap.add_argument("--limit", type=int, help="run only the first N requests")
    ap.add_argument("--seed", type=int, default=0, help="sampling and rendering seed")
    ap.add_argument("--config", type=Path, help="YAML run config (default: the embedded stack)")
    ap.add_argument("--cache", type=Path, help="cache root (sets GENEVOLVE_CACHE; default: yours)")
    ap.add_argument("--fresh", action="store_true", help="rerun requests that already have a trajectory.json")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    if args.cache is not None:
        os.environ["GENEVOLVE_CACHE"] = str(args.cache)

    from genevolve.config import build_agent, build_renderer, load_config

    todo = [(i, c, r) for i, (c, r) in enumerate(REQUESTS[: args.limit], start=1)]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cfg = load_config(args.config, {"agent": {"sampling": {"seed": args.seed}}})
    agent, renderer = build_agent(cfg), build_renderer(cfg)
    build_s = time.perf_counter() - start
    print(f"policy {agent.policy.name}, renderer {renderer.name if renderer else 'none'}; built in {build_s:.1f} s")
    print(HEADER, flush=True)
    rows = asyncio.run(run_all(agent, renderer, todo, args.out, seed=args.seed, fresh=args.fresh))

    t = totals(rows)
    mean = "-" if t["mean_seconds"] is None else f"{t['mean_seconds']:.1f} s"
    print(f"\nvalid programs {t['valid_programs']}/{t['n']}, images {t['images']}/{t['n']}, mean time {mean}"
          f"{', crashed ' + str(t['crashed']) if t['crashed'] else ''}, repeated calls {t['repeated_calls']}, "
          f"mean prompt overlap {'-' if t['mean_prompt_overlap'] is None else format(t['mean_prompt_overlap'], '.0%')}"
          "; stop reasons "
          + ", ".join(f"{k} {v}" for k, v in sorted(t["stop_reasons"].items())))
    summary = {"policy": agent.policy.name, "renderer": renderer.name if renderer else None, "seed": args.seed,
               "build_s": build_s, "config": json.loads(cfg.model_dump_json()), "totals": t, "requests": rows}
    text = json.dumps(summary, indent=2, default=str)
    (args.out / "summary.json").write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(text, encoding="utf-8")
    print(f"wrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()

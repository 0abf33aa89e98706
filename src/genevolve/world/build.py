"""``build_world``: facts -> requests -> GT programs and images -> splits -> expert SFT set, in one folder.

DIR/
  manifest.json        version, seed, sizes, counts, timings
  requests.jsonl       every WorldRequest (hidden constraints, GT prompt clauses, facts, split)
  bench.jsonl rl.jsonl GenEvolve-Bench rows (meta carries the same hidden record)
  sft.jsonl            GenEvolve-Data SFT rows: the scripted expert's trajectories on the sft split
  images/<id>.png      GT images (collage renderer at full fidelity)
  library/             entity pictures and look-alikes, with caption sidecars (image search)
  corpus/facts.jsonl   fact documents (text search, beside the Wikipedia summaries)
  config.yaml          agent = world expert over the world's search, collage renderer, world judge
  config.noisy.yaml    the same with noise 0.5; config.direct.yaml: the raw request, no agent;
  config.embedded.yaml the untuned embedded policy over the same tools

A GT program that does not satisfy its own constraints when rendered is dropped (and counted), so
every request's GT is verified. Every file carries ``WORLD_VERSION``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from genevolve.world import knowledge, quality
from genevolve.world.records import WORLD_VERSION, WorldRequest

DEFAULT_SIZES = {"bench": 192, "rl": 808, "sft": 1000}
DIFFICULTIES = ("medium", "hard")
HARD_SHARE = 0.5
EXCLUDED_THINGS = {"zzz", "collision", "droplet", "dashing away", "dizzy", "speech balloon", "thought balloon",
                   "currency exchange", "vibration mode", "cooking", "love hotel", "bar chart", "outbox tray",
                   "inbox tray", "incoming envelope", "oncoming automobile", "spouting whale", "seat", "bug", "blossom",
                   "herb", "oden", "sake", "bomb", "name badge", "pager", "optical disk", "tram car", "ewe", "ram",
                   "poultry leg", "tanabata tree", "pine decoration", "carp streamer", "steaming bowl"}


def categories() -> list[tuple[str, str, Any]]:
    return [(knowledge.TRACK, name, gen) for name, gen in knowledge.CATEGORIES.items()] + \
           [(quality.TRACK, name, gen) for name, gen in quality.CATEGORIES.items()]


def generate(total: int, seed: int) -> list[WorldRequest]:
    """``total`` unique requests spread evenly over the 16 categories and two difficulties."""
    from genevolve.world.facts import load_countries, load_things
    from genevolve.world.slots import Context

    things = [t for t in load_things() if t.name not in EXCLUDED_THINGS]
    ctx = Context.build(list(load_countries()), things)
    cats = categories()
    cells = [(track, name, gen, d) for track, name, gen in cats for d in DIFFICULTIES]
    quota = {i: total // len(cells) + (1 if i < total % len(cells) else 0) for i in range(len(cells))}
    out: list[WorldRequest] = []
    seen: set[str] = set()  # questions and (template, entities) pairs already made
    rngs = [random.Random(f"{seed}|{name}|{diff}") for _, name, _, diff in cells]
    made = [0] * len(cells)

    def fill(i: int, want: int) -> None:
        _, name, gen, diff = cells[i]
        attempts = 0
        while want > 0 and attempts < 60 * want + 200:
            attempts += 1
            req = gen(ctx, rngs[i], diff)
            if req is None or req.question in seen or req.pair_key in seen:
                continue
            seen.update((req.question, req.pair_key))
            req.id = f"w{seed}-{name}-{diff[0]}{made[i]:04d}"
            out.append(req)
            made[i] += 1
            want -= 1

    for i in range(len(cells)):
        fill(i, quota[i])
    for _ in range(4):  # cells with few distinct pairs (few single-neighbour countries) leave a gap: share it
        gap = total - len(out)
        if gap <= 0:
            break
        for i in sorted(range(len(cells)), key=lambda i: made[i]):
            fill(i, -(-gap // len(cells)))
    return out[:total] if len(out) > total else out


def render_gt(out: Path, reqs: list[WorldRequest], workers: int | None = None) -> tuple[list[WorldRequest], list[str]]:
    """Render each GT program; keep only requests whose GT passes every one of its own checks.

    Rendering and PNG encoding dominate a build (~20-40 ms a request), so requests are split over
    ``workers`` processes (default: the CPU count)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or os.cpu_count() or 1
    chunks = [reqs[i::workers] for i in range(workers)]
    payload = [(str(out), [r.model_dump(mode="json") for r in chunk]) for chunk in chunks if chunk]
    if workers == 1 or len(reqs) < 64:
        results = [_render_chunk(p) for p in payload]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_render_chunk, payload))
    failures = {rid: why for chunk in results for rid, why in chunk}
    kept, dropped = [], []
    for req in reqs:
        if failures.get(req.id):
            dropped.append(f"{req.id}: {failures[req.id]}")
        else:
            req.gt_image = f"images/{req.id}.png"
            kept.append(req)
    return kept, dropped


def _render_chunk(args: tuple[str, list[dict[str, Any]]]) -> list[tuple[str, str]]:
    """Render and save one chunk's GT images; ``(id, why it failed or "")`` per request."""
    from PIL import PngImagePlugin

    from genevolve.render.collage import CollageRenderer
    from genevolve.types import Program, Reference
    from genevolve.world.checks import check_manifest, drawn_text
    from genevolve.world.judge import text_grades

    out, rows = Path(args[0]), args[1]
    renderer = CollageRenderer()
    info = PngImagePlugin.PngInfo()
    info.add_text("world_version", WORLD_VERSION)
    (out / "images").mkdir(exist_ok=True)
    results = []
    for row in rows:
        req = WorldRequest.model_validate(row)
        refs = [Reference(img_id=f"IMG_{i:03d}", path=str(out / "library" / f"{s.image}.png"), title=s.name)
                for i, s in enumerate(req.entities, 1)]
        result = renderer.render(Program(gen_prompt=req.gt_prompt(), references=refs), seed=0)
        manifest = result.meta["manifest"]
        grades = text_grades(req.texts, drawn_text(manifest))
        failed = [c.detail for c in check_manifest(req, manifest, grades) if not (c.faithful and c.visual is not False)]
        failed += [f"text {t}: {g}" for t, _, g in grades if g < 1.0]
        if failed or manifest["overlap"]:
            results.append((req.id, "; ".join(failed) or "overlap"))
            continue
        result.image.save(out / "images" / f"{req.id}.png", pnginfo=info, compress_level=1)
        results.append((req.id, ""))
    return results


def world_config(out: Path, policy: dict[str, Any], agent: dict[str, Any] | None = None,
                 wiki: bool = True) -> dict[str, Any]:
    return {
        "policy": policy,
        "search": {"kind": "local", "folders": [str(out / "corpus")], "wiki": wiki},
        "image_search": {"kind": "local", "folders": [str(out / "library")], "openmoji": False,
                         "semantic_fallback": False},
        "renderer": {"kind": "collage"},
        "judge": {"kind": "world", "world": str(out)},
        "agent": agent or {"max_policy_calls": 11, "max_tool_calls": 10},
    }


def write_configs(out: Path, wiki: bool) -> None:
    import yaml

    head = f"# {WORLD_VERSION}: genevolve bench --data {out}/bench.jsonl --config THIS_FILE --out runs/NAME\n"
    configs = {
        "config.yaml": world_config(out, {"kind": "world-expert", "world": str(out), "noise": 0.0}, wiki=wiki),
        "config.noisy.yaml": world_config(out, {"kind": "world-expert", "world": str(out), "noise": 0.5}, wiki=wiki),
        "config.direct.yaml": world_config(out, {"kind": "direct"}, {"min_references": 0}, wiki=wiki),
        "config.embedded.yaml": world_config(out, {"kind": "embedded"}, {
            "max_policy_calls": 5, "max_tool_calls": 4,
            "sampling": {"temperature": 0.6, "top_p": 0.9, "max_tokens": 1536}}, wiki=wiki),
    }
    for name, cfg in configs.items():
        (out / name).write_text(head + yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


async def expert_rows(out: Path, reqs: list[WorldRequest], wiki: bool, concurrency: int = 4) -> list[dict[str, Any]]:
    """Run the scripted expert (noise 0) through the real agent loop and tools; SFT rows in request order."""
    from genevolve.config import build_agent, load_config
    from genevolve.sft_rows import trajectory_to_sft_row

    cfg = load_config(None, world_config(out, {"kind": "world-expert", "world": str(out)}, wiki=wiki))
    agent = build_agent(cfg)
    agent.policy.accepts_images = True  # rows carry the retrieved pictures, like GenEvolve-Data
    sem = asyncio.Semaphore(concurrency)

    async def one(req: WorldRequest) -> dict[str, Any]:
        async with sem:
            traj = await agent.arun(req.question, id=req.id)
        row = trajectory_to_sft_row(traj, image_root=out)
        return {"id": req.id, "world_version": WORLD_VERSION, "ok": traj.ok, **row}

    return list(await asyncio.gather(*(one(r) for r in reqs)))


def build_world(out: str | Path, *, seed: int = 0, sizes: dict[str, int] | None = None, wiki: bool = True,
                rephrase: float = 0.0, progress: bool = False) -> dict[str, Any]:
    """Build (or rebuild) a world in ``out``; returns the manifest. ``rephrase``: the share of SFT requests
    asked in a free-form wording (``genevolve.world.phrasing``) instead of their template's."""
    from genevolve.world.facts import load_countries, load_things
    from genevolve.world.library import write_corpus, write_library
    from genevolve.world.splits import assign, check_splits

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sizes = dict(sizes or DEFAULT_SIZES)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        timings[name] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        if progress:
            print(f"  {name}: {timings[name]:.1f} s", flush=True)

    total = sum(sizes.values())
    reqs = generate(int(total * 1.04) + 8, seed)  # a few spare: GT self-checks drop some
    things = [t for t in load_things() if t.name not in EXCLUDED_THINGS]
    lap("generate")
    write_library(out, list(load_countries()), things)
    n_docs = write_corpus(out, list(load_countries()), things)
    lap("library")
    kept, dropped = render_gt(out, reqs)
    kept = _trim(kept, total, seed)
    lap("gt_images")
    assign(kept, sizes, seed)
    n_rephrased = rephrase_split(kept, "sft", rephrase, seed)
    counts = check_splits(kept)
    write_jsonl(out / "requests.jsonl", [r.model_dump(mode="json") for r in kept])
    for split in ("bench", "rl"):
        write_jsonl(out / f"{split}.jsonl", [r.bench_row() for r in kept if r.split == split])
    write_configs(out, wiki)
    lap("write")
    sft = [r for r in kept if r.split == "sft"]
    rows = asyncio.run(expert_rows(out, sft, wiki)) if sft else []
    write_jsonl(out / "sft.jsonl", rows)
    lap("expert")
    manifest = {"version": WORLD_VERSION, "seed": seed, "sizes": sizes, "counts": counts, "n_requests": len(kept),
                "n_gt_dropped": len(dropped), "gt_dropped": dropped[:50], "n_corpus_docs": n_docs,
                "n_sft_ok": sum(r["ok"] for r in rows), "wiki": wiki, "rephrase": rephrase,
                "n_rephrased": n_rephrased, "timings": timings}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def rephrase_split(reqs: list[WorldRequest], split: str, share: float, seed: int) -> int:
    """Ask a seeded ``share`` of ``split``'s requests in a free-form wording; returns how many changed.
    A wording that another request already uses keeps its template's (questions stay unique)."""
    from genevolve.world.phrasing import rephrase

    if share <= 0:
        return 0
    rng = random.Random(f"{seed}|rephrase")
    questions = {r.question for r in reqs}
    changed = 0
    for req in reqs:
        if req.split != split or rng.random() >= share:
            continue
        new = rephrase(req.question, rng)
        if new != req.question and new not in questions:
            questions.add(new)
            req.question, req.wording = new, "free"
            changed += 1
    return changed


def _trim(reqs: list[WorldRequest], total: int, seed: int) -> list[WorldRequest]:
    """Drop the spares evenly across categories, so the world has exactly ``total`` requests."""
    if len(reqs) <= total:
        return reqs
    by_cell: dict[tuple, list[WorldRequest]] = {}
    for r in reqs:
        by_cell.setdefault((r.category, r.difficulty), []).append(r)
    extra = len(reqs) - total
    rng = random.Random(f"{seed}|trim")
    while extra > 0:
        cell = max(by_cell, key=lambda k: (len(by_cell[k]), rng.random()))
        by_cell[cell].pop()
        extra -= 1
    keep = {r.id for cell in by_cell.values() for r in cell}
    return [r for r in reqs if r.id in keep]

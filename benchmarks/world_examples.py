"""Side-by-side example images for docs/world.md: GT | expert | noisy expert | direct baseline.

    python benchmarks/world_examples.py --world DIR --runs runs/ --out docs/world/examples

``--runs`` holds the bench run folders ``config``, ``config.noisy`` and ``config.direct`` (the names of
the world's config files). Picks ten bench requests covering both tracks and many categories, writes
one JPEG per request, and prints a markdown table (request, scores) to paste into the doc.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

RUNS = (("expert", "config"), ("noisy", "config.noisy"), ("direct", "config.direct"))
TILE = 256


def scores(run: Path) -> dict[str, float]:
    out = {}
    for line in (run / "scores.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["ok"]:
            out[r["id"]] = r["score"]["overall"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=10)
    args = ap.parse_args()
    rows = [json.loads(line) for line in (args.world / "bench.jsonl").read_text().splitlines()]
    picked, cats = [], set()
    for track in ("knowledge", "quality") * args.n:
        row = next((r for r in rows if r["eval_type"] == track and r["category"] not in cats), None)
        if row and len(picked) < args.n:
            picked.append(row)
            cats.add(row["category"])
    args.out.mkdir(parents=True, exist_ok=True)
    all_scores = {name: scores(args.runs / folder) for name, folder in RUNS}
    print("| # | track / category / difficulty | request | expert | noisy | direct |\n|---|---|---|---|---|---|")
    for i, row in enumerate(picked, 1):
        tiles = [Image.open(args.world / row["gt_image"]).convert("RGB")]
        tiles += [Image.open(args.runs / folder / "images" / f"{row['id']}.png").convert("RGB") for _, folder in RUNS]
        sheet = Image.new("RGB", (TILE * len(tiles), TILE + 22), "white")
        d = ImageDraw.Draw(sheet)
        for k, (tile, label) in enumerate(zip(tiles, ("GT", *[n for n, _ in RUNS]), strict=True)):
            sheet.paste(tile.resize((TILE, TILE)), (k * TILE, 22))
            d.text((k * TILE + 6, 5), label, fill=(0, 0, 0))
        name = f"{i:02d}-{row['category']}.png"
        sheet.quantize(256).save(args.out / name, optimize=True)  # small files for the docs
        s = [all_scores[n].get(row["id"], float("nan")) for n, _ in RUNS]
        print(f"| {i} | {row['eval_type']} / {row['category']} / {row['difficulty']} | {row['question']} | "
              f"{s[0]:.2f} | {s[1]:.2f} | {s[2]:.2f} |")
        print(f"|   | ![{name}](world/examples/{name}) | | | | |")


if __name__ == "__main__":
    main()

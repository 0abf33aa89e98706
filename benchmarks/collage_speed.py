"""Time the embedded renderer and the heuristic judge per image on this machine's CPU.

    python benchmarks/collage_speed.py [--n 20] [--size 512]

Prints render time per image (several prompt shapes, generated references), then judge time per
image: a required text that the image shows (OCR of the manifest's text regions only), one it does
not show (OCR of the whole image), no required text (no OCR); and the one-off model load (rapidocr +
MiniLM) separately, since it is paid once per process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from genevolve.judge.heuristic import HeuristicJudge, embedder, ocr_engine
from genevolve.render.collage import CollageRenderer
from genevolve.types import Program, Reference

PROMPTS = [
    'Three red apples from the first reference image on the left. A cat on the right. '
    'A sign at the top reads "OPEN 24 HOURS".',
    "Exactly five (5) yellow stars from the second reference image in a row in the center, in space, neon.",
    "Some apples and a dog, red, on a beach at sunset.",
    'A photo from the first reference image in the center, vintage, "Summer 1986" at the bottom.',
]
REQUEST_TEXT = 'Three red apples on the left, a cat on the right and a sign that reads "OPEN 24 HOURS".'
REQUEST_PLAIN = "Three red apples on the left and a cat on the right."


def references(folder: Path) -> list[Reference]:
    apple = Image.new("RGB", (300, 320), "white")
    ImageDraw.Draw(apple).ellipse((30, 60, 270, 300), fill=(60, 170, 60), outline=(30, 90, 30), width=5)
    star = Image.new("RGBA", (240, 240), (0, 0, 0, 0))
    ImageDraw.Draw(star).regular_polygon((120, 120, 110), 5, fill=(250, 200, 40, 255))
    paths = [folder / "apple.png", folder / "star.png"]
    apple.save(paths[0])
    star.save(paths[1])
    return [Reference(img_id=f"IMG_{i:03d}", path=str(p)) for i, p in enumerate(paths, start=1)]


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return f"mean {statistics.mean(ms):7.1f} ms   p50 {ms[len(ms) // 2]:7.1f} ms   max {ms[-1]:7.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="images per measurement")
    ap.add_argument("--size", type=int, default=512, help="canvas side in pixels")
    args = ap.parse_args()
    renderer = CollageRenderer(width=args.size, height=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        refs = references(Path(tmp))
        programs = [Program(gen_prompt=p, references=refs) for p in PROMPTS]
        renderer.render(programs[0])  # warm the sprite cache and the font
        times, results = [], []
        for k in range(args.n):
            t = time.perf_counter()
            results.append(renderer.render(programs[k % len(programs)], seed=k))
            times.append(time.perf_counter() - t)
        print(f"{'render ' + str(args.size) + 'px':20s}{summary(times)}")

        t = time.perf_counter()
        ocr_engine()
        embedder()
        print(f"{'judge model load':20s}{time.perf_counter() - t:.2f} s (once per process)")
        judge, gt = HeuristicJudge(), results[0]
        judge.score(REQUEST_TEXT, gt.image, gt_image=gt.image, meta=gt.meta)  # warm-up
        with_text, without = results[0::len(PROMPTS)], [r for k, r in enumerate(results) if k % len(PROMPTS)]
        for label, request, pool in (("judge, text found", REQUEST_TEXT, with_text),
                                     ("judge, text missing", REQUEST_TEXT, without),
                                     ("judge, no text", REQUEST_PLAIN, results)):
            times = []
            for k in range(args.n):
                res = pool[k % len(pool)]
                t = time.perf_counter()
                judge.score(request, res.image, gt_image=gt.image, meta=res.meta)
                times.append(time.perf_counter() - t)
            print(f"{label:20s}{summary(times)}")


if __name__ == "__main__":
    main()

"""SFT speed on this machine: token-view building, then seconds per optimizer step and tokens/s for
a tiny Llama from config (SmolLM2 tokenizer), SmolLM2-135M with LoRA, and SmolLM2-135M full, each of
the last two also under bfloat16 autocast (``model.autocast``).

    python benchmarks/sft_speed.py --data runs/world/sft.jsonl [--rows 16] [--steps 3] [--only tiny]

Needs the embedded model converted once (any ``genevolve run`` does it). Prints one line per setup;
peak RSS is the process's high-water mark so far (setups run in the order listed).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

SETUPS = {
    "tiny": {"path": "embedded", "from_config": {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256,
                                                 "intermediate_size": 768, "num_attention_heads": 4,
                                                 "num_key_value_heads": 2, "max_position_embeddings": 8192,
                                                 "tie_word_embeddings": True}},
    "smollm2-lora": {"path": "embedded", "lora": {"r": 16, "alpha": 32}},
    "smollm2-full": {"path": "embedded"},
    # mixed precision (model.autocast): the forward and backward in bfloat16, weights and AdamW in float32
    "smollm2-lora-bf16": {"path": "embedded", "lora": {"r": 16, "alpha": 32}, "autocast": "bfloat16"},
    "smollm2-full-bf16": {"path": "embedded", "autocast": "bfloat16"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="an SFT jsonl (e.g. a world's sft.jsonl)")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--only", choices=sorted(SETUPS), action="append")
    args = parser.parse_args()

    from genevolve.evolve.sft import run_sft
    from genevolve.evolve.train_config import SFTFile

    lines = Path(args.data).read_text(encoding="utf-8").splitlines()[: args.rows]
    work = Path(tempfile.mkdtemp(prefix="sft-speed-"))
    data = work / "sft.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in args.only or list(SETUPS):
        cfg = SFTFile.model_validate({"model": SETUPS[name], "sft": {
            "data": [str(data)], "out": str(work / name), "max_steps": args.steps, "grad_accum": args.grad_accum,
            "eval_frac": 0.0, "lr": 1e-4, "save_every": 10_000}})
        t0 = time.perf_counter()
        run_sft(cfg, progress=False)
        total = time.perf_counter() - t0
        steps = [json.loads(x) for x in (work / name / "metrics.jsonl").read_text().splitlines()]
        per_step = [s["seconds"] for s in steps if s["kind"] == "train"]
        tokens = statistics.mean(s["tokens"] for s in steps if s["kind"] == "train")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{name:13s} {statistics.median(per_step):6.2f} s/step (median of {len(per_step)}), "
              f"{args.grad_accum} sequences/step, {tokens:.0f} assistant tokens/step, "
              f"{tokens / statistics.median(per_step):6.1f} assistant tok/s; whole run {total:.1f} s "
              f"(load, views, save); peak RSS {rss:.0f} MB", flush=True)


if __name__ == "__main__":
    main()

"""``genevolve world ...``: build an offline world (the Typer sub-app mounted by ``genevolve.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

world_app = typer.Typer(help="The offline world: verifiable requests, a scripted expert and an exact judge.",
                        no_args_is_help=True)


@world_app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", "-o", help="world folder (created; rebuilt in place)")],
    seed: Annotated[int, typer.Option(help="world seed: the same seed and packages give the same world")] = 0,
    bench: Annotated[int, typer.Option(min=0, help="benchmark split size")] = 192,
    rl: Annotated[int, typer.Option(min=0, help="RL split size")] = 808,
    sft: Annotated[int, typer.Option(min=0, help="SFT split size (each gets an expert trajectory)")] = 1000,
    wiki: Annotated[bool, typer.Option("--wiki/--no-wiki", help="text search also over the 10,033 Wikipedia summaries")] = True,
    rephrase: Annotated[float, typer.Option(min=0.0, max=1.0, help="share of SFT requests asked in a free-form "
                                                                    "wording instead of their template's")] = 0.0,
) -> None:
    """Write DIR/bench.jsonl, rl.jsonl, sft.jsonl, requests.jsonl, images/, library/, corpus/ and configs."""
    from rich.console import Console

    from genevolve.world.build import build_world

    console = Console()
    if bench + rl + sft == 0:
        console.print("[red]error:[/red] all split sizes are 0")
        raise typer.Exit(2)
    with console.status(f"building world seed {seed} into {out}…"):
        m = build_world(out, seed=seed, sizes={"bench": bench, "rl": rl, "sft": sft}, wiki=wiki,
                        rephrase=rephrase)
    secs = sum(m["timings"].values())
    console.print(f"{m['version']}: {m['n_requests']} requests {m['counts']} in {secs:.1f} s "
                  f"({m['n_gt_dropped']} GT programs failed their own checks and were left out); "
                  f"{m['n_sft_ok']} expert trajectories")
    console.print(f"benchmark it: genevolve bench --data {out}/bench.jsonl --config {out}/config.yaml --out runs/NAME")


@world_app.command("tokenizer")
def tokenizer(
    world: Annotated[Path, typer.Argument(help="a built world folder")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="tokenizer folder (default WORLD/tokenizer)")] = None,
    vocab: Annotated[int, typer.Option(min=300, help="vocabulary size, special tokens included")] = 4096,
    base: Annotated[str, typer.Option(help="tokenizer whose special tokens and chat template are kept")] = "embedded",
) -> None:
    """Fit a byte-level BPE to the world's SFT and RL text, for a policy trained from scratch (model.path)."""
    from rich.console import Console

    from genevolve.registry import ConfigError
    from genevolve.world.tokenizer import world_tokenizer

    console = Console()
    try:
        folder = world_tokenizer(world, out, vocab_size=vocab, base=base)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"wrote a {vocab}-token tokenizer to {folder} (use it as model.path with model.from_config)")

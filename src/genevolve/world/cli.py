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
) -> None:
    """Write DIR/bench.jsonl, rl.jsonl, sft.jsonl, requests.jsonl, images/, library/, corpus/ and configs."""
    from rich.console import Console

    from genevolve.world.build import build_world

    console = Console()
    if bench + rl + sft == 0:
        console.print("[red]error:[/red] all split sizes are 0")
        raise typer.Exit(2)
    with console.status(f"building world seed {seed} into {out}…"):
        m = build_world(out, seed=seed, sizes={"bench": bench, "rl": rl, "sft": sft}, wiki=wiki)
    secs = sum(m["timings"].values())
    console.print(f"{m['version']}: {m['n_requests']} requests {m['counts']} in {secs:.1f} s "
                  f"({m['n_gt_dropped']} GT programs failed their own checks and were left out); "
                  f"{m['n_sft_ok']} expert trajectories")
    console.print(f"benchmark it: genevolve bench --data {out}/bench.jsonl --config {out}/config.yaml --out runs/NAME")

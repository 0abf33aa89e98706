"""The ``genevolve`` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from genevolve.registry import ConfigError, MissingDependency

app = typer.Typer(help="GenEvolve: an image-generation agent that plans prompt-reference programs.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(code)


@app.command()
def run(
    request: Annotated[str, typer.Argument(help="what to draw, in words")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for trajectory.json and program.json")] = Path("runs/last"),
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config (see genevolve.config)")] = None,
    policy: Annotated[str | None, typer.Option(help="policy backend: embedded (default), openai, hf, or package.module:Class")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (vLLM, SGLang, gateway)")] = None,
    model: Annotated[str | None, typer.Option(help="model name (openai) or path/id (hf)")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="env var holding the API key (default OPENAI_API_KEY)")] = None,
    search: Annotated[str | None, typer.Option(help="text search backend: local (default), serper, searxng")] = None,
    image_search: Annotated[str | None, typer.Option(help="image search backend: local (default), serper, searxng")] = None,
    searxng_url: Annotated[str | None, typer.Option(help="SearXNG base URL (for --search searxng)")] = None,
    docs: Annotated[list[Path] | None, typer.Option("--docs", help="folder of .md/.txt/.jsonl documents for local search (repeatable)")] = None,
    images: Annotated[list[Path] | None, typer.Option("--images", help="folder of captioned images for local image search (repeatable)")] = None,
    max_references: Annotated[int | None, typer.Option(help="references kept in the program (default 2)")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature (default 0.6)")] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed, where the backend supports one")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the program")] = False,
) -> None:
    """Run the agent on one request; write OUT/trajectory.json, OUT/program.json and OUT/image.png.

    With no --policy and no --config, the embedded offline stack runs (SmolLM2 + local search +
    OpenMoji + collage renderer)."""
    from genevolve.config import build_agent, build_renderer, load_config
    from genevolve.display import print_outcome, print_trajectory
    from genevolve.pipeline import solve

    if not request.strip():
        _fail("the request is empty: say what to draw, e.g. genevolve run \"a red fox in the snow\"")
    overrides: dict[str, Any] = {"agent": {}}
    if policy:
        overrides["policy"] = {"kind": policy}
    for key, value in (("base_url", base_url), ("model", model), ("api_key_env", api_key_env)):
        if value is not None:
            overrides.setdefault("policy", {})[key] = value
    if search:
        overrides["search"] = {"kind": search} | ({"base_url": searxng_url} if searxng_url else {})
    if image_search:
        overrides["image_search"] = {"kind": image_search}
    if docs:
        overrides.setdefault("search", {"kind": "local"})["folders"] = [str(d) for d in docs]
    if images:
        overrides.setdefault("image_search", {"kind": "local"})["folders"] = [str(d) for d in images]
    if max_references is not None:
        overrides["agent"]["max_references"] = max_references
    sampling = {k: v for k, v in (("temperature", temperature), ("seed", seed)) if v is not None}
    if sampling:
        overrides["agent"]["sampling"] = sampling
    try:
        cfg = load_config(config, overrides)
        agent = build_agent(cfg)
        renderer = build_renderer(cfg)
    except (ConfigError, MissingDependency) as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(_dump_config(cfg), encoding="utf-8")
    with console.status(f"running {agent.policy.name}…", spinner="dots"):
        outcome = asyncio.run(solve(agent, request, out, renderer=renderer, seed=seed or 0))
    traj = outcome.trajectory
    (print_outcome if quiet else print_trajectory)(traj, console)
    written = ["trajectory.json"] + (["program.json"] if traj.program else []) + (["image.png"] if outcome.image_path else [])
    console.print(f"wrote {', '.join(str(out / w) for w in written)}")
    if outcome.render and "error" in outcome.render:
        err.print(f"[red]rendering failed:[/red] {outcome.render['message']}")
    if traj.program is None or (renderer is not None and outcome.image_path is None):
        raise typer.Exit(1)


DEMO_REQUESTS = [
    ("needs search", "The flag of the country where Mount Fuji stands, waving on a tall pole under a blue sky"),
    ("needs counting", "Exactly five yellow bananas in a row on a white table"),
    ("needs text", "A coffee cup under a shop sign that reads \"OPEN 24 HOURS\""),
]


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the samples and index.html")] = Path("runs/demo"),
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config (default: embedded stack)")] = None,
    seed: Annotated[int, typer.Option(help="sampling and rendering seed")] = 0,
    fresh: Annotated[bool, typer.Option("--fresh", help="redo samples already in OUT")] = False,
) -> None:
    """Run three sample requests (search, counting, text) and write OUT/index.html."""
    from genevolve.config import build_agent, build_judge, build_renderer, load_config
    from genevolve.html_report import write_page
    from genevolve.pipeline import solve

    try:
        cfg = load_config(config, {"agent": {"sampling": {"seed": seed}}})
        agent, renderer, judge = build_agent(cfg), build_renderer(cfg), build_judge(cfg)
    except (ConfigError, MissingDependency) as exc:
        _fail(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(_dump_config(cfg), encoding="utf-8")
    samples = []
    for i, (name, request) in enumerate(DEMO_REQUESTS, 1):
        folder = out / f"{i}-{name.split()[-1]}"
        samples.append((f"{i}. {name}", folder))
        if (folder / "trajectory.json").is_file() and not fresh:
            console.print(f"[dim]{name}: already done ({folder}), skipping[/dim]")
            continue
        with console.status(f"{name}: {request}", spinner="dots"):
            outcome = asyncio.run(solve(agent, request, folder, renderer=renderer, judge=judge, seed=seed))
        t = outcome.trajectory
        score = f" · score {outcome.score.overall:.2f}" if outcome.score else ""
        console.print(f"{'[green]✓' if outcome.ok else '[red]✗'}[/] {name}: {t.stop_reason} · "
                      f"{t.n_tool_calls} tool calls · {t.timings.get('total', 0):.0f} s{score}")
    page = write_page(out, samples, title="genevolve demo",
                      intro=f"policy <code>{agent.policy.name}</code>, renderer "
                            f"<code>{renderer.name if renderer else 'none'}</code>, judge "
                            f"<code>{judge.name if judge else 'none'}</code>, seed {seed}")
    console.print(f"wrote {page}")


def _dump_config(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False)


@app.command()
def doctor() -> None:
    """Say which backends are usable on this machine, and why not."""
    from rich.table import Table

    from genevolve.doctor import checks

    table = Table(title="genevolve backends")
    for col in ("role", "backend", "usable", "why"):
        table.add_column(col)
    for c in checks():
        table.add_row(c.role, c.backend, "[green]yes[/green]" if c.ok else "[red]no[/red]", c.why)
    console.print(table)


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()

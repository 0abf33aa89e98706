"""The ``genevolve`` command line."""

from __future__ import annotations

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
    policy: Annotated[str | None, typer.Option(help="policy backend: openai, hf, or package.module:Class")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (vLLM, SGLang, gateway)")] = None,
    model: Annotated[str | None, typer.Option(help="model name (openai) or path/id (hf)")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="env var holding the API key (default OPENAI_API_KEY)")] = None,
    search: Annotated[str | None, typer.Option(help="text search backend: serper, searxng")] = None,
    image_search: Annotated[str | None, typer.Option(help="image search backend: serper")] = None,
    searxng_url: Annotated[str | None, typer.Option(help="SearXNG base URL (for --search searxng)")] = None,
    max_references: Annotated[int | None, typer.Option(help="references kept in the program (default 2)")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature (default 0.6)")] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed, where the backend supports one")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the program")] = False,
) -> None:
    """Run the agent on one request; write OUT/trajectory.json and OUT/program.json."""
    from genevolve.config import build_agent, load_config
    from genevolve.display import print_outcome, print_trajectory
    from genevolve.policy.base import PolicyError

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
    if max_references is not None:
        overrides["agent"]["max_references"] = max_references
    sampling = {k: v for k, v in (("temperature", temperature), ("seed", seed)) if v is not None}
    if sampling:
        overrides["agent"]["sampling"] = sampling
    try:
        cfg = load_config(config, overrides)
        agent = build_agent(cfg)
    except (ConfigError, MissingDependency) as exc:
        _fail(str(exc))
    try:
        traj = agent.run(request)
    except PolicyError as exc:  # pragma: no cover - the agent records these; kept as a last guard
        _fail(str(exc), 1)
    out.mkdir(parents=True, exist_ok=True)
    traj.save(out / "trajectory.json")
    (out / "config.yaml").write_text(_dump_config(cfg), encoding="utf-8")
    if traj.program is not None:
        from genevolve.types import write_text_atomic

        write_text_atomic(out / "program.json", traj.program.model_dump_json(indent=2))
    (print_outcome if quiet else print_trajectory)(traj, console)
    console.print(f"wrote {out / 'trajectory.json'}" + (f" and {out / 'program.json'}" if traj.program else ""))
    if traj.program is None:
        raise typer.Exit(1)


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

"""The ``genevolve`` command line."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from genevolve.registry import ConfigError, MissingDependency

app = typer.Typer(help="GenEvolve: an image-generation agent that plans prompt-reference programs.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/bold red] {escape(message)}")
    raise typer.Exit(code)


def _user_error_types() -> tuple[type[Exception], ...]:
    """Exceptions that are the user's to fix: configuration, input data, the run folder, a missing extra.
    Anything else (a ValueError from a bug included) is the program's fault."""
    from genevolve.bench.datasets import DatasetError
    from genevolve.bench.store import RunFolderError
    from genevolve.skills import SkillFileError

    return (ConfigError, MissingDependency, DatasetError, RunFolderError, SkillFileError)


def _user_errors(command: Callable[..., None]) -> Callable[..., None]:
    """A command whose user errors print as one line (exit status 2); other exceptions keep their traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, _user_error_types()):
                _fail(str(exc))
            raise

    return run


@app.command()
@_user_errors
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
    cfg = load_config(config, overrides)
    agent = build_agent(cfg)
    renderer = build_renderer(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(_dump_config(cfg), encoding="utf-8")
    with console.status(f"running {agent.policy.name}…", spinner="dots"):
        outcome = asyncio.run(solve(agent, request, out, renderer=renderer, seed=seed or 0))
    traj = outcome.trajectory
    (print_outcome if quiet else print_trajectory)(traj, console)
    written = ["trajectory.json"] + (["program.json"] if traj.program else []) + (["image.png"] if outcome.image_path else [])
    console.print(f"wrote {', '.join(str(out / w) for w in written)}")
    if outcome.failure is not None:
        err.print(f"[red]{outcome.failure.failure}:[/red] {escape(outcome.failure.detail)}")
    if traj.program is None or (renderer is not None and outcome.image_path is None):
        raise typer.Exit(1)


DEMO_REQUESTS = [
    ("needs search", "The flag of the country where Mount Fuji stands, waving on a tall pole under a blue sky"),
    ("needs counting", "Exactly five yellow bananas in a row on a white table"),
    ("needs text", "A coffee cup under a shop sign that reads \"OPEN 24 HOURS\""),
]


@app.command()
@_user_errors
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

    cfg = load_config(config, {"agent": {"sampling": {"seed": seed}}})
    agent, renderer, judge = build_agent(cfg), build_renderer(cfg), build_judge(cfg)
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
        score += f" · {escape(outcome.failure.reason)}" if outcome.failure else ""
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
@_user_errors
def bench(
    data: Annotated[Path | None, typer.Option("--data", "-d", help="dataset file or folder: GenEvolve-Bench/Data jsonl or parquet, WISE json, plain jsonl/txt requests; needed for --stage agent/all")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder; rerunning the same command resumes it")] = Path("runs/bench"),
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config (default: embedded stack)")] = None,
    stage: Annotated[str, typer.Option(help="agent, render, judge, or all; a single stage reads the previous stage's jsonl in OUT")] = "all",
    concurrency: Annotated[int, typer.Option(min=1, help="items in flight per stage at once")] = 4,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N items of the dataset")] = None,
    seed: Annotated[int, typer.Option(help="sampling and rendering seed")] = 0,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="skip malformed dataset rows (counted) instead of stopping")] = False,
) -> None:
    """Benchmark: agent -> render -> judge over a dataset; writes OUT/*.jsonl, images/, summary.json/csv.

    Each stage appends one fsynced record per item, so a killed run resumes where it stopped."""
    from genevolve.bench.datasets import load_dataset
    from genevolve.bench.runner import STAGES, Backends, BenchRun
    from genevolve.bench.store import save_stage_config
    from genevolve.bench.summary import write_summary
    from genevolve.config import build_agent, build_judge, build_renderer, load_config

    if stage not in (*STAGES, "all"):
        _fail(f"--stage must be one of {', '.join(STAGES)} or all, got {stage!r}")
    if data is None and stage in ("agent", "all"):
        _fail(f"--stage {stage} needs --data (a dataset file or folder)")
    dataset = load_dataset(data, skip_bad=skip_bad, limit=limit) if data is not None else None
    cfg = load_config(config, {"agent": {"sampling": {"seed": seed}}})
    stages = STAGES if stage == "all" else (stage,)
    for side in save_stage_config(out, json.loads(cfg.model_dump_json()), stages):  # refuses a changed config
        err.print(f"[yellow]note:[/yellow] {out / 'config.yaml'} differs from this run's config; saved this one as {side}")
    backends = Backends(agent=build_agent(cfg) if "agent" in stages else None,
                        renderer=build_renderer(cfg) if "render" in stages else None,
                        judge=build_judge(cfg) if "judge" in stages else None)
    if dataset is not None and dataset.skipped:
        err.print(f"[yellow]skipped {len(dataset.skipped)} bad rows[/yellow], first: {dataset.skipped[0]}")
    out.mkdir(parents=True, exist_ok=True)
    items = dataset.items if dataset is not None else None
    runner = BenchRun(out, backends, items, concurrency=concurrency, seed=seed)
    asyncio.run(runner.run(stage))
    if runner.n_exceptions:
        err.print(f"[red]{runner.n_exceptions} items failed with an unexpected exception[/red] "
                  "(recorded as <stage>:exception:<Type> in the stage's jsonl)")
    if "judge" in runner.stages(stage):
        summary = write_summary(out, [i.id for i in items] if items is not None else None)
        a = summary["all"]
        ks = "n/a" if a["kscore"] is None else f"{a['kscore']:.4f}"
        console.print(f"KScore {ks} · missing-as-zero {a['kscore_missing_zero'] or 0:.4f} · "
                      f"{a['n_scored']}/{summary['n_items']} scored · failures {summary['failures'] or 'none'}")
        console.print(f"wrote {out / 'summary.json'}, {out / 'summary.csv'}; see it with: genevolve report {out}")
    else:
        console.print(f"wrote {out}; next: genevolve bench --out {out} --stage "
                      f"{STAGES[STAGES.index(stage) + 1]}")


@app.command()
@_user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by genevolve bench")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="page to write (default RUN_DIR/report.html)")] = None,
) -> None:
    """Write one self-contained HTML page (embedded thumbnails) for a benchmark run."""
    from genevolve.bench.report import write_report
    from genevolve.bench.runner import LOGS

    if not any((run_dir / name).is_file() for name in LOGS.values()):
        _fail(f"{run_dir} holds none of {', '.join(LOGS.values())}: is it a genevolve bench run folder?")
    page = write_report(run_dir, out)
    console.print(f"wrote {page} ({page.stat().st_size / 1e6:.1f} MB)")


@app.command()
@_user_errors
def sft(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML with `model` and `sft` sections (see genevolve.evolve.train_config)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (overrides sft.out); rerunning resumes it")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="stop after N optimizer steps (overrides sft.max_steps)")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="discard OUT's checkpoints and metrics and start over")] = False,
) -> None:
    """Supervised cold start on GenEvolve-Data SFT rows: loss on assistant tokens only, LoRA or full.

    Writes OUT/metrics.jsonl, OUT/checkpoints/ and OUT/final/ (adapter or model + tokenizer). Under
    `accelerate launch` or `torchrun` with several processes they train data-parallel and the main one writes."""
    from genevolve.evolve.parallel import launched_processes, leave_launched_process
    from genevolve.evolve.sft import run_sft
    from genevolve.evolve.train_config import load_sft_config

    overrides = {k: v for k, v in (("out", str(out) if out else None), ("max_steps", max_steps)) if v is not None}
    cfg = load_sft_config(config, {"sft": overrides} if overrides else None)
    with launched_processes() as accelerator:
        result = run_sft(cfg, fresh=fresh, config_dir=config.parent, accelerator=accelerator)
    if accelerator is None or accelerator.is_main_process:
        if result.resumed_from:
            console.print(f"resumed from step {result.resumed_from}")
        losses = " · ".join(f"{name} {value:.4f}" for name, value in (("train loss", result.train_loss),
                                                                       ("eval loss", result.eval_loss)) if value is not None)
        console.print(f"{result.steps} steps{' · ' + losses if losses else ''}; wrote {result.final}")
    leave_launched_process(accelerator)


@app.command()
@_user_errors
def evolve(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML with `model`, `env` and `evolve` sections (see genevolve.evolve.rl_config)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run folder (overrides evolve.out); rerunning resumes it")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="total steps (overrides evolve.steps)")] = None,
) -> None:
    """Self-evolution: GRPO with Visual Experience Distillation on rollout groups.

    Each step samples K rollouts per request, renders and judges them, contrasts the best and worst into
    experience bundles, re-scores the student's tokens under the teacher's decision guide and updates the
    policy. Writes OUT/metrics.jsonl, trajectories.jsonl, experience.jsonl, images/ and checkpoints/;
    rerunning the same command resumes from the newest checkpoint. Under `accelerate launch` or `torchrun`
    with several processes the main one samples and writes, and all of them train data-parallel."""
    from genevolve.evolve.loop import EvolveRun
    from genevolve.evolve.parallel import launched_processes, leave_launched_process
    from genevolve.evolve.rl_config import load_evolve_config

    overrides = {k: v for k, v in (("out", str(out) if out else None), ("steps", steps)) if v is not None}
    cfg = load_evolve_config(config, {"evolve": overrides} if overrides else None)
    with launched_processes() as accelerator:
        run = EvolveRun(cfg, config_dir=config.parent, accelerator=accelerator)
        done = run.run()
    if run.is_main and done:
        console.print(f"{len(done)} steps run, last reward {done[-1]['reward']:.3f}; see {cfg.evolve.out}/metrics.jsonl")
    elif run.is_main:
        console.print(f"nothing to do: {cfg.evolve.out} already holds {cfg.evolve.steps} steps")
    leave_launched_process(accelerator)


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


serve_app = typer.Typer(help="Serve a backend over HTTP.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

from genevolve.world.cli import world_app  # noqa: E402 - the sub-app registers next to its siblings

app.add_typer(world_app, name="world")


@serve_app.command("render")
@_user_errors
def serve_render(
    backend: Annotated[str, typer.Option(help="renderer kind: collage, qwen_image_edit, flux_kontext, …")] = "collage",
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8100,
    option: Annotated[list[str] | None, typer.Option("--option", help="renderer option KEY=VALUE (YAML value), repeatable")] = None,
    max_concurrency: Annotated[int, typer.Option(help="renders running at once")] = 4,
) -> None:
    """Serve a renderer at POST /generate (the GenEvolve service payload) and GET /health."""
    import yaml

    from genevolve.registry import build
    from genevolve.render import RENDERERS

    options: dict[str, Any] = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    renderer = build(RENDERERS, backend, "renderer", **options)
    from genevolve.render.http_service import serve

    console.print(f"serving renderer {renderer.name} on http://{host}:{port}/generate")
    serve(renderer, host=host, port=port, max_concurrency=max_concurrency)


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()

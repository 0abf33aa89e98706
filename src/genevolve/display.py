"""Readable terminal views of trajectories (rich)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from genevolve.protocol import parse_tool_response, parse_turn
from genevolve.types import Trajectory

_CLIP = 600


def _clip(text: str, n: int = _CLIP) -> str:
    return text if len(text) <= n else text[:n] + f" … [{len(text) - n} more characters]"


def print_trajectory(traj: Trajectory, console: Console | None = None, *, show_system: bool = False) -> None:
    console = console or Console()
    console.print(Panel(Text(traj.request), title="request", border_style="cyan"))
    round_ = 0
    for turn in traj.turns:
        if turn.role == "system" and not show_system or turn.kind == "request":
            continue
        if turn.role == "assistant":
            round_ += 1
            parsed = parse_turn(turn.content)
            parts = []
            if parsed.think:
                parts.append(Text(_clip(parsed.think), style="dim italic"))
            if parsed.tool_call:
                parts.append(Text(f"→ {parsed.tool_call.name}({parsed.tool_call.arguments})", style="bold yellow"))
            elif parsed.answer is not None:
                parts.append(Text("→ answer", style="bold green"))
            else:
                parts.append(Text(_clip(turn.content), style="red"))
            console.print(Panel(Group(*parts), title=f"round {round_} · policy", border_style="magenta"))
        else:
            body = parse_tool_response(turn.content) or turn.content
            style = {"format_error": "red", "answer_rejected": "red", "final_step": "blue"}.get(turn.kind, "white")
            console.print(Panel(Text(_clip(body)), title=turn.kind or turn.role, border_style=style))
    print_outcome(traj, console)


def print_outcome(traj: Trajectory, console: Console | None = None) -> None:
    console = console or Console()
    table = Table.grid(padding=(0, 2))
    table.add_row("stop", f"[bold]{traj.stop_reason}[/bold]" + (f"  ({traj.failure})" if traj.failure else ""))
    table.add_row("calls", f"{traj.n_policy_calls} policy · {traj.n_tool_calls} tools · {traj.n_format_errors} format errors")
    if traj.violations:
        table.add_row("violations", ", ".join(traj.violations))
    table.add_row("time", " · ".join(f"{k} {v:.1f}s" for k, v in traj.timings.items()))
    if traj.program:
        table.add_row("gen_prompt", traj.program.gen_prompt)
        for i, ref in enumerate(traj.program.references, 1):
            table.add_row(f"reference {i}", f"{ref.img_id} {ref.title!r} → {ref.path}  [{ref.note}]")
    console.print(Panel(table, title="program" if traj.program else "no program",
                        border_style="green" if traj.program else "red"))


class Progress:
    """The progress display of long commands (``genevolve sft``, ``evolve``, ``bench``): rich bars, one per
    task, with log lines printed above them, on stderr.

    Off a terminal (a log file, a pipe, CI, a test) the bars stay quiet: nothing but the log lines, as
    plain text, one per ``line`` call (a training job's log keeps its per-step lines). ``enabled=False``
    is silent altogether (the non-main processes of a multi-process run; library callers).

        with Progress() as progress:
            steps = progress.task("sft", total=100, completed=40)   # resumed at 40
            progress.advance(steps, info="loss 0.4123")
            progress.line("eval loss 0.52")
    """

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bars

        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._bars = Bars(TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console,
                          disable=not (enabled and self.console.is_terminal))

    def __enter__(self) -> Progress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def task(self, name: str, *, total: int, completed: int = 0) -> int:
        """A bar for ``total`` units, ``completed`` of them already done (a resumed run)."""
        return self._bars.add_task(name, total=total, completed=completed, info="")

    def advance(self, task: int, n: int = 1, *, info: str | None = None) -> None:
        """``n`` more units of ``task`` done; ``info`` replaces the text after the bar."""
        self._bars.update(task, advance=n, **({"info": info} if info is not None else {}))

    def line(self, text: str) -> None:
        """One log line (above the bars on a terminal)."""
        if self.enabled:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

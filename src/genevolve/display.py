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

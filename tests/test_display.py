"""The one progress display of long commands: bars on a terminal, quiet off one (log lines stay)."""

import asyncio
import io

import pytest
from rich.console import Console

from genevolve.display import Progress


@pytest.mark.parametrize("terminal", [False, True])
def test_bars_only_on_a_terminal_lines_always(terminal):
    out = io.StringIO()
    with Progress(console=Console(file=out, force_terminal=terminal, width=100)) as progress:
        steps = progress.task("sft", total=4, completed=1)
        progress.advance(steps, info="loss 0.4123")
        progress.line("eval after step 2  reward 0.500")
    text = out.getvalue()
    assert "eval after step 2  reward 0.500" in text
    assert ("2/4" in text and "loss 0.4123" in text) == terminal


def test_disabled_is_silent():
    out = io.StringIO()
    with Progress(False, console=Console(file=out, force_terminal=True)) as progress:
        progress.advance(progress.task("bench", total=2))
        progress.line("not shown")
    assert out.getvalue() == ""


def test_the_benchmark_draws_no_bar_off_a_terminal(tmp_path, capsys):
    from genevolve.agent import Agent, AgentConfig
    from genevolve.bench.datasets import BenchItem
    from genevolve.bench.runner import Backends, BenchRun
    from genevolve.judge.heuristic import HeuristicJudge
    from genevolve.render.collage import CollageRenderer
    from tests.fakes import AnswerPolicy

    agent = Agent(AnswerPolicy(), [], AgentConfig(min_references=0, max_policy_calls=1, structured_decoding=False))
    run = BenchRun(tmp_path, Backends(agent, CollageRenderer(128, 128), HeuristicJudge(embeddings=False)),
                   [BenchItem(id="b0", request="two red kites")], progress=True)
    asyncio.run(run.run())
    captured = capsys.readouterr()
    assert (tmp_path / "scores.jsonl").is_file()
    assert captured.out == "" and captured.err == ""

"""The benchmark runner end to end with cheap real pieces: an answer-at-once policy, the collage renderer and
the heuristic judge without embeddings. Kill/resume, stage-alone runs, failures, the CLI and the report."""

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from genevolve.agent import Agent, AgentConfig
from genevolve.bench.datasets import load_dataset
from genevolve.bench.report import write_report
from genevolve.bench.runner import Backends, BenchRun
from genevolve.bench.summary import write_summary
from genevolve.cli import app
from genevolve.judge.heuristic import HeuristicJudge
from genevolve.policy.base import Policy, PolicyError
from genevolve.protocol import format_turn
from genevolve.render.base import RenderError
from genevolve.render.collage import CollageRenderer


class AnswerPolicy(Policy):
    """Answers at once with the request as gen_prompt; requests containing 'POLICYFAIL' fail."""

    name = "answer"

    async def achat(self, turns, *, sampling, constraint=None):
        request = next(t.content for t in turns if t.kind == "request")
        if "POLICYFAIL" in request:
            raise PolicyError("server said 500")
        return format_turn("draw it", answer={"gen_prompt": request, "reference_images": []})


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so the runner does not record it as an item failure."""


class FlakyRenderer(CollageRenderer):
    def __init__(self, kill_on: str | None = None):
        super().__init__(256, 256)
        self.kill_on = kill_on
        self.rendered: list[str] = []

    async def arender(self, program, *, seed=0):
        if self.kill_on and self.kill_on in program.gen_prompt:
            raise Killed()
        if "RENDERFAIL" in program.gen_prompt:
            raise RenderError("refused", "content refused")
        self.rendered.append(program.gen_prompt)
        return await super().arender(program, seed=seed)


AGENT_CFG = {"min_references": 0, "max_policy_calls": 1, "structured_decoding": False}
REQUESTS = ['A red apple under a sign that reads "FRESH"', "Three blue birds on a wire", "POLICYFAIL a boat",
            "RENDERFAIL a green house", 'A yellow taxi with the text "NYC"', "Two black cats on a sofa"]


@pytest.fixture(scope="module")
def judge():
    return HeuristicJudge(embeddings=False)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    rows = []
    for i, request in enumerate(REQUESTS):
        Image.new("RGB", (64, 64), (40 * i, 120, 200)).save(root / "images" / f"{i}.jpg")
        rows.append({"id": f"s{i}", "question": request, "gt_image": f"images/{i}.jpg",
                     "eval_type": "knowledge" if i % 2 else "quality", "category": f"c{i % 3}",
                     "difficulty": "hard" if i < 3 else "medium", "meta": {}})
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _run(out, items, judge, renderer=None, stage="all", concurrency=3):
    agent = Agent(AnswerPolicy(), [], AgentConfig(**AGENT_CFG))
    run = BenchRun(out, Backends(agent, renderer or FlakyRenderer(), judge), items, concurrency=concurrency,
                   progress=False)
    asyncio.run(run.run(stage))
    return write_summary(out, [i.id for i in items]) if stage in ("all", "judge") else None


def _numbers(summary):
    return {k: v for k, v in summary.items() if k != "run"}


def test_full_run_records_failures(tmp_path, data, judge):
    items = load_dataset(data).items
    summary = _run(tmp_path / "run", items, judge)
    assert summary["complete"] and summary["all"]["n"] == 6 and summary["all"]["n_scored"] == 4
    assert summary["failures"] == {"agent:policy_error": 1, "render:render_error:refused": 1}
    scores = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    assert {s["id"] for s in scores} == {f"s{i}" for i in range(6)}
    failed = {s["id"]: s["failure"] for s in scores if not s["ok"]}
    assert failed == {"s2": "agent:policy_error", "s3": "render:render_error:refused"}
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == ["s0.png", "s1.png", "s4.png", "s5.png"]
    by_id = {s["id"]: s for s in summary["samples"]}
    assert by_id["s2"]["overall"] is None and by_id["s2"]["overall_missing_zero"] == 0.0
    assert set(summary["groups"]) == {"track", "category", "difficulty"}
    assert summary["all"]["kscore_missing_zero"] < summary["all"]["kscore"]


def test_kill_and_resume_gives_identical_numbers(tmp_path, data, judge):
    items = load_dataset(data).items
    reference = _run(tmp_path / "ref", items, judge)

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        _run(out, items, judge, renderer=FlakyRenderer(kill_on="yellow taxi"), concurrency=1)
    done_before = {line for line in (out / "scores.jsonl").read_text().splitlines()}
    assert 0 < len(done_before) < 6
    # a torn last line, as a kill in the middle of a write leaves it
    with open(out / "renders.jsonl", "a") as fh:
        fh.write('{"id": "s9", "item": {"id"')
    resumed_renderer = FlakyRenderer()
    resumed = _run(out, items, judge, renderer=resumed_renderer)
    assert _numbers(resumed) == _numbers(reference)
    assert done_before <= set((out / "scores.jsonl").read_text().splitlines())  # nothing finished was redone
    assert "Three blue birds on a wire" not in resumed_renderer.rendered
    assert all(json.loads(line) for line in (out / "renders.jsonl").read_text().splitlines())


def test_limit_then_full_run(tmp_path, data, judge):
    out = tmp_path / "run"
    _run(out, load_dataset(data, limit=2).items, judge)
    renderer = FlakyRenderer()
    full = _run(out, load_dataset(data).items, judge, renderer=renderer)
    assert len(renderer.rendered) == 2  # s4, s5 only; s0, s1 were done, s2/s3 fail upstream or in render
    assert _numbers(full) == _numbers(_run(tmp_path / "ref", load_dataset(data).items, judge))


def test_stages_alone_match_the_full_run(tmp_path, data, judge):
    items = load_dataset(data).items
    reference = _run(tmp_path / "ref", items, judge)
    out = tmp_path / "staged"
    for stage in ("agent", "render"):
        _run(out, items, judge, stage=stage)
    assert not (out / "scores.jsonl").exists()
    # the judge stage on "another machine": a copy of the folder, no dataset
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    agent = Agent(AnswerPolicy(), [], AgentConfig(**AGENT_CFG))
    asyncio.run(BenchRun(moved, Backends(agent, None, judge), None, progress=False).run("judge"))
    assert _numbers(write_summary(moved, [i.id for i in items])) == _numbers(reference)


def test_render_stage_without_trajectories_says_what_to_do(tmp_path, judge):
    from genevolve.bench.store import RunFolderError

    run = BenchRun(tmp_path, Backends(None, FlakyRenderer(), judge), None, progress=False)
    with pytest.raises(RunFolderError, match="run --stage agent first"):
        asyncio.run(run.run("render"))


def _bench_config(tmp_path, policy: str) -> Path:
    """A `genevolve bench --config` file: a test policy of this module, the collage renderer, the heuristic judge."""
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({
        "policy": {"kind": f"tests.test_bench_run:{policy}"}, "search": None, "image_search": None,
        "knowledge": False, "renderer": {"kind": "collage", "width": 256, "height": 256},
        "judge": {"kind": "heuristic", "embeddings": False}, "agent": AGENT_CFG}))
    return config


def test_cli_bench_and_report_in_chromium(tmp_path, data):
    config = _bench_config(tmp_path, "AnswerPolicy")
    out = tmp_path / "runs" / "cli"
    runner = CliRunner()
    result = runner.invoke(app, ["bench", "--data", str(data), "--out", str(out), "--config", str(config),
                                 "--concurrency", "2"])
    assert result.exit_code == 0, result.output
    assert "KScore" in result.output and (out / "config.yaml").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["judge"]["kind"] == "heuristic"
    assert (out / "summary.csv").read_text().startswith("group_by,group,n,")
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    page = out / "report.html"
    text = page.read_text()
    assert "data:image/jpeg;base64," in text and 'src="images/' not in text  # self-contained
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: the page was written but not loaded in a browser")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"{page.as_uri()}#track=knowledge"], capture_output=True, text=True, timeout=60).stdout
    assert 'data-ready="1"' in dom, "the filter script did not run"
    assert dom.count('<section class="sample') == 6 and 'id="summary"' in dom and 'id="failures"' in dom
    assert "3 of 6 shown" in dom  # the hash set the track filter: s1, s3, s5 are knowledge
    # the CLI uses the plain collage renderer: only the policy failure lacks an image
    assert dom.count('class="generated"') == 5 and dom.count('class="gt"') == 6


def test_cli_bench_refuses_a_changed_config_naming_the_keys(tmp_path, data):
    config = _bench_config(tmp_path, "AnswerPolicy")
    other = tmp_path / "other.yaml"
    changed = yaml.safe_load(config.read_text())
    changed["renderer"]["width"] = 128
    other.write_text(yaml.safe_dump(changed))
    out = tmp_path / "run"
    runner = CliRunner()

    def bench(config_path, *extra):
        return runner.invoke(app, ["bench", "--data", str(data), "--out", str(out), "--limit", "2",
                                   "--config", str(config_path), *extra])

    assert bench(config).exit_code == 0
    refused = bench(other)
    assert refused.exit_code == 2 and "renderer.width: 256 -> 128" in " ".join(refused.output.split())
    refused = bench(config, "--seed", "1")  # the agent's sampling seed, which the renders use too
    assert refused.exit_code == 2 and "agent.sampling.seed: 0 -> 1" in " ".join(refused.output.split())
    # a stage whose records do not depend on the change may run: the agent stage under another renderer
    assert bench(other, "--stage", "agent").exit_code == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["renderer"]["width"] == 256
    resumed = runner.invoke(app, ["bench", "--data", str(data), "--out", str(out), "--config", str(config)])
    assert resumed.exit_code == 0, resumed.output
    assert len(_jsonl_ids(out / "scores.jsonl")) == len(REQUESTS)


def test_report_of_a_missing_run_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "genevolve bench run" in " ".join(result.output.split())


def test_report_written_for_partial_run(tmp_path, data, judge):
    out = tmp_path / "partial"
    _run(out, load_dataset(data).items, judge, stage="agent")
    page = write_report(Path(out))
    assert "incomplete run" in page.read_text()


class SlowAnswerPolicy(AnswerPolicy):
    """AnswerPolicy taking a quarter second per call, so a SIGKILL can land in the middle of a run."""

    async def achat(self, turns, *, sampling, constraint=None):
        await asyncio.sleep(0.25)
        return await super().achat(turns, sampling=sampling, constraint=constraint)


def _jsonl_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    ids = []
    for line in path.read_text().splitlines():
        try:
            ids.append(json.loads(line)["id"])
        except (ValueError, KeyError):
            pass  # a torn last line
    return ids


def test_sigkill_mid_run_then_resume_gives_identical_summary(tmp_path, data):
    """A real `genevolve bench` process killed with SIGKILL while items are in flight, then run again."""
    import os
    import signal
    import sys
    import time

    config = _bench_config(tmp_path, "SlowAnswerPolicy")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def bench(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", "from genevolve.cli import app; app()", "bench", "--data", str(data),
             "--out", str(out), "--config", str(config), "--concurrency", "1"],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    reference = tmp_path / "ref"
    proc = bench(reference)
    assert proc.wait(timeout=240) == 0, proc.stdout.read()

    out = tmp_path / "killed"
    proc = bench(out)
    deadline = time.monotonic() + 240
    while len(_jsonl_ids(out / "trajectories.jsonl")) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = {name: _jsonl_ids(out / name) for name in ("trajectories.jsonl", "renders.jsonl", "scores.jsonl")}
    assert 2 <= len(before["trajectories.jsonl"]) < len(REQUESTS)
    assert not (out / "summary.json").exists()

    proc = bench(out)
    assert proc.wait(timeout=240) == 0, proc.stdout.read()
    after = {name: _jsonl_ids(out / name) for name in before}
    for name, ids in before.items():
        assert after[name][:len(ids)] == ids  # finished records kept, in place
        assert len(after[name]) == len(set(after[name]))  # and none redone
    assert sorted(after["scores.jsonl"]) == sorted(_jsonl_ids(reference / "scores.jsonl"))
    numbers = [{k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k != "run"}
               for d in (reference, out)]
    assert numbers[0] == numbers[1]

"""End to end: `genevolve run` against loopback servers speaking the OpenAI and Serper protocols."""

import io
import json

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from genevolve.cli import app
from genevolve.protocol import ToolCall, format_turn
from genevolve.types import Program, Trajectory
from tests.loopback_http import LoopbackServer, send_bytes, send_json

SECRET = "sk-test-never-log-me-123"
runner = CliRunner()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _chat(replies):
    it = iter(replies)

    def route(h, request):
        content = next(it)
        send_json(h, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "test",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    return route


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("GENEVOLVE_CACHE", str(tmp_path / "cache"))
    with LoopbackServer() as srv:
        base = srv.url("").rstrip("/")
        srv.routes["/v1/chat/completions"] = _chat([
            format_turn("Who is the mascot?", tool_call=ToolCall("search", {"queries": ["Paris 2024 mascot"]})),
            format_turn("Find a picture.", tool_call=ToolCall("image_search", {"query": "Phryge mascot"})),
            format_turn("IMG_001 shows it.", answer={
                "gen_prompt": 'The red mascot from the first reference image waving, poster text "PARIS 2024"',
                "reference_images": [{"img_id": "IMG_001", "note": "the mascot's design"}]}),
        ])
        srv.routes["/search"] = lambda h, r: send_json(h, {"organic": [
            {"title": "Phryge", "link": "https://example.org/phryge", "snippet": "The Phryges are the mascots.", "position": 1}]})
        srv.routes["/images"] = lambda h, r: send_json(h, {"images": [
            {"title": "Phryge mascot", "imageUrl": f"{base}/img/phryge.png", "link": "https://example.org/p",
             "source": "example.org", "imageWidth": 64, "imageHeight": 48, "position": 1}]})
        srv.routes["/img/phryge.png"] = lambda h, r: send_bytes(h, _png(), "image/png")
        config = {"policy": {"kind": "openai", "model": "test", "base_url": f"{base}/v1"},
                  "search": {"kind": "serper", "base_url": base},
                  "image_search": {"kind": "serper", "base_url": base},
                  "download": {"allow_private": True}}
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        yield srv, path


def test_run_writes_a_valid_program(world, tmp_path):
    srv, config = world
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "A poster of the Paris 2024 mascot", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    program = Program.model_validate_json((out / "program.json").read_text())
    assert program.gen_prompt.startswith("The red mascot")
    assert program.references[0].img_id == "IMG_001" and program.references[0].path
    Image.open(program.references[0].path).verify()
    traj = Trajectory.load(out / "trajectory.json")
    assert traj.ok and traj.n_tool_calls == 2 and traj.backends["policy"] == "openai:test"
    assert Image.open(out / "image.png").size[0] > 0
    for name in ("trajectory.json", "program.json", "config.yaml", "render.json"):
        assert SECRET not in (out / name).read_text()
    assert SECRET not in result.output
    chat = [r for r in srv.requests if r.path == "/v1/chat/completions"]
    assert len(chat) == 3 and chat[0].headers["authorization"] == f"Bearer {SECRET}"
    assert json.loads(chat[0].body)["messages"][0]["role"] == "system"


def test_flags_override_config(world, tmp_path):
    srv, config = world
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "x", "--config", str(config), "--out", str(out), "--temperature", "0.1", "-q"])
    assert result.exit_code == 0, result.output
    chat = [json.loads(r.body) for r in srv.requests if r.path == "/v1/chat/completions"]
    assert chat[0]["temperature"] == 0.1


def test_defaults_resolve_to_the_embedded_stack(tmp_path):
    from genevolve.config import load_config

    cfg = load_config()
    assert (cfg.policy.kind, cfg.search.kind, cfg.image_search.kind, cfg.renderer.kind) == ("embedded", "local", "local", "collage")
    assert cfg.agent.max_policy_calls == 5  # embedded budgets
    path = tmp_path / "c.yaml"
    path.write_text("policy: {kind: openai, model: m}\nsearch: null\n")
    cfg = load_config(path)
    assert cfg.agent.max_policy_calls == 11 and cfg.search is None and cfg.image_search.kind == "local"


def test_missing_backend_option_is_a_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("policy: {kind: openai}\nsearch: null\n")
    result = runner.invoke(app, ["run", "a cat", "--config", str(path), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "model" in result.output


def test_unknown_backend_lists_valid_names(tmp_path):
    result = runner.invoke(app, ["run", "a cat", "--policy", "gpt5", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "valid names" in result.output and "openai" in result.output


def test_failed_rollout_exits_1_and_keeps_the_trajectory(tmp_path, monkeypatch):
    with LoopbackServer() as srv:
        srv.routes["/v1/chat/completions"] = _chat(["I refuse to follow the format."] * 11)
        out = tmp_path / "out"
        result = runner.invoke(app, ["run", "a cat", "--policy", "openai", "--base-url", srv.url("/v1"),
                                     "--model", "m", "--out", str(out)])
    assert result.exit_code == 1
    traj = Trajectory.load(out / "trajectory.json")
    assert traj.stop_reason == "no_answer" and traj.n_format_errors == 11
    assert not (out / "program.json").exists()


@pytest.mark.parametrize("command", [[], ["run"], ["doctor"], ["demo"], ["bench"], ["report"], ["serve", "render"]])
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_doctor_reports_backends(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0 and "serper" in result.output and "SERPER_API_KEY" in result.output


def test_empty_request_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["run", "   ", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "request is empty" in result.output


def test_broken_user_image_folder_is_reported_not_fatal(tmp_path, monkeypatch):
    """A user folder with a broken file: the library skips it and says so; the run goes on."""
    monkeypatch.setenv("GENEVOLVE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (32, 32), (0, 90, 200)).save(folder / "blue_kite.png")
    (folder / "broken_kite.png").write_bytes(b"not a png at all")
    with LoopbackServer() as srv:
        srv.routes["/v1/chat/completions"] = _chat([
            format_turn("look", tool_call=ToolCall("image_search", {"query": "kite"})),
            format_turn("ok", answer={"gen_prompt": "the kite of the first reference image in the sky",
                                      "reference_images": [{"img_id": "IMG_001", "note": "kite"}]}),
        ])
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"policy": {"kind": "openai", "model": "m", "base_url": srv.url("/v1")},
                                       "search": None, "image_search": {"kind": "local", "folders": [str(folder)], "openmoji": False}}))
        out = tmp_path / "out"
        result = runner.invoke(app, ["run", "a kite", "--config", str(cfg), "--out", str(out)])
    assert result.exit_code == 0, result.output
    program = Program.model_validate_json((out / "program.json").read_text())
    assert program.references[0].path.endswith("blue_kite.png")


def test_a_config_mistake_is_one_line_that_names_the_key(tmp_path):
    config = tmp_path / "evolve.yaml"
    config.write_text(yaml.safe_dump({"evolve": {"data": str(tmp_path / "rl.jsonl"), "alpha": 0.0,
                                                 "rollout": {"pool": {"workerz": 2}}}}))
    result = runner.invoke(app, ["evolve", "--config", str(config)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.output.startswith("error:") and "workerz" in result.output and "Traceback" not in result.output


def test_an_unexpected_error_keeps_its_traceback(tmp_path):
    """A ValueError from a bug is not the user's mistake: the CLI shows where it came from."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import genevolve.evolve.rl_config as rl_config\n"
            "def bug(*args, **kwargs):\n"
            "    raise ValueError('a bug, not a user error')\n"
            "rl_config.load_evolve_config = bug\n"
            "sys.argv = ['genevolve', 'evolve', '--config', 'evolve.yaml']\n"
            "from genevolve.cli import main\n"
            "main()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "Traceback" in out.stderr and "ValueError: a bug, not a user error" in out.stderr
    assert "error: a bug" not in out.stderr  # not turned into a one-line user error

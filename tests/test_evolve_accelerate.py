"""Under accelerate with two CPU processes, the learner and the whole `genevolve evolve` loop give the same
update as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent


def _launcher():
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not on PATH")
    return launcher


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [_launcher(), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "0", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_match_one(tmp_path):
    from tests.accelerate_learner import main

    single = tmp_path / "single.pt"
    main(str(single), accelerate=False)
    double = tmp_path / "double.pt"
    result = _launch([str(ROOT / "tests" / "accelerate_learner.py"), str(double), "accelerate"])
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(single), torch.load(double)
    assert b["metrics"]["grad_norm"] == pytest.approx(a["metrics"]["grad_norm"], rel=1e-4)
    assert b["metrics"]["loss"] == pytest.approx(a["metrics"]["loss"], rel=1e-4)  # summed over processes
    for name, value in a["params"].items():
        torch.testing.assert_close(b["params"][name], value, rtol=1e-4, atol=1e-6)
    assert a["metrics"]["grad_norm"] > 0 and a["metrics"]["loss"] != 0  # the step had something to learn


def test_evolve_on_two_processes_matches_one_and_resumes(tmp_path):
    """The main process samples and writes; both train. Step 0 gives the same record and weights as a
    one-process run; a second launch resumes from the checkpoint without repeating a step."""
    import json

    import yaml

    from genevolve.evolve.loop import EvolveRun, latest_checkpoint
    from tests.test_evolve_loop import _comparable, make_config, make_tokenizer

    tok_dir = tmp_path / "tok"
    make_tokenizer().save_pretrained(tok_dir)
    single = EvolveRun(make_config(tmp_path, tok_dir, tmp_path / "single", steps=1), progress=False)
    (want,) = single.run()
    cfg = make_config(tmp_path, tok_dir, tmp_path / "double", steps=1)
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    command = [shutil.which("genevolve", path=str(Path(sys.executable).parent)) or "genevolve", "evolve",
               "--config", str(path)]
    result = _launch(command)
    assert result.returncode == 0, result.stderr[-3000:]
    (got,) = [json.loads(line) for line in (tmp_path / "double" / "metrics.jsonl").read_text().splitlines()]
    learner_keys = ("loss", "grpo_loss", "ved_loss", "grad_norm", "clip_frac_low", "clip_frac_high")
    for key in learner_keys:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-7), key
    rest = {k: v for k, v in _comparable(want).items() if k not in learner_keys}
    assert {k: v for k, v in _comparable(got).items() if k not in learner_keys} == json.loads(json.dumps(rest))
    a = torch.load(latest_checkpoint(tmp_path / "single") / "learner.pt", weights_only=False)["learner"]["trainable"]
    b = torch.load(latest_checkpoint(tmp_path / "double") / "learner.pt", weights_only=False)["learner"]["trainable"]
    for name, value in a.items():  # Adam divides by the gradient's size: near-zero entries amplify float noise
        torch.testing.assert_close(b[name], value, rtol=1e-3, atol=1e-5)  # (an update moves a weight by ~1e-2)

    result = _launch([*command, "--steps", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "double" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
    assert latest_checkpoint(tmp_path / "double").name == "step_000001"

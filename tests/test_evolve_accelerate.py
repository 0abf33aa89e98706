"""The learner under accelerate with two CPU processes gives the same update as one process."""

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


def test_two_processes_match_one(tmp_path):
    from tests.accelerate_learner import main

    single = tmp_path / "single.pt"
    main(str(single), accelerate=False)
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not on PATH")
    double = tmp_path / "double.pt"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "0", str(ROOT / "tests" / "accelerate_learner.py"),
         str(double), "accelerate"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(single), torch.load(double)
    assert b["metrics"]["grad_norm"] == pytest.approx(a["metrics"]["grad_norm"], rel=1e-4)
    for name, value in a["params"].items():
        torch.testing.assert_close(b["params"][name], value, rtol=1e-4, atol=1e-6)
    assert a["metrics"]["grad_norm"] > 0 and a["metrics"]["loss"] != 0  # the step had something to learn

"""With two CPU processes (torchrun; accelerate joins them over gloo), the learner, the whole `genevolve
evolve` loop and `genevolve sft` give the same update as one process. Each test checks that two processes
really ran: `accelerate launch --cpu` would start only one."""

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


def _launch(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    runner = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if runner is None:
        pytest.skip("torchrun is not on PATH")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    with subprocess.Popen([runner, "--standalone", "--nproc_per_node", "2", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun passes SIGTERM on to its workers; killed, it would leave them running
            proc.communicate(timeout=60)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _genevolve() -> str:
    return shutil.which("genevolve", path=str(Path(sys.executable).parent)) or shutil.which("genevolve") or "genevolve"


def launch_sft_pair(tmp_path: Path, model_extra: dict, **settings) -> list[str]:
    """`genevolve sft` on tiny rows: in this process into ``single/``, and the same config with ``model_extra``
    on two processes into ``double/``. Returns the two-process command (to relaunch it)."""
    import json

    import yaml

    from genevolve.evolve.sft import run_sft
    from tests.test_evolve_sft import SUBJECTS, TINY, config, row
    from tests.test_policy_hf import make_tokenizer

    tok_dir = tmp_path / "tok"
    make_tokenizer().save_pretrained(tok_dir)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(row(s)) + "\n" for s in SUBJECTS * 3))
    model = {"path": str(tok_dir), "from_config": TINY}
    run_sft(config(tmp_path / "single", data, model, **settings), progress=False)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path / "double", data, {**model, **model_extra}, **settings)
                                   .model_dump(mode="json")))
    command = [_genevolve(), "sft", "--config", str(path)]
    result = _launch(command)
    assert result.returncode == 0, result.stderr[-3000:]
    return command


def same_sft_records(got: list[dict], want: list[dict], rel: float) -> None:
    assert [(r["step"], r["kind"]) for r in got] == [(r["step"], r["kind"]) for r in want]
    for g, w in zip(got, want, strict=True):
        for key in ("loss", "context_loss", "grad_norm", "eval_loss", "tokens", "lr", "epoch"):
            if key in w:
                assert g[key] == pytest.approx(w[key], rel=rel), (w["step"], key)


def same_final_weights(a_dir: Path, b_dir: Path, rtol: float, atol: float) -> None:
    from genevolve.evolve.model import load_model
    from genevolve.evolve.train_config import ModelSpec
    from tests.test_evolve_sft import trainable

    a, b = (trainable(load_model(ModelSpec(path=str(d / "final")))) for d in (a_dir, b_dir))
    assert sorted(a) == sorted(b)
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=rtol, atol=atol)


def test_two_processes_match_one(tmp_path):
    from tests.accelerate_learner import main

    single = tmp_path / "single.pt"
    main(str(single), accelerate=False)
    double = tmp_path / "double.pt"
    result = _launch([str(ROOT / "tests" / "accelerate_learner.py"), str(double), "accelerate"])
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(single), torch.load(double)
    assert (a["metrics"]["processes"], b["metrics"]["processes"]) == (1, 2)
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

    from genevolve.evolve.loop import EvolveRun
    from genevolve.runfolder import latest_checkpoint
    from tests.test_evolve_loop import _comparable, make_config, make_tokenizer

    tok_dir = tmp_path / "tok"
    make_tokenizer().save_pretrained(tok_dir)
    single = EvolveRun(make_config(tmp_path, tok_dir, tmp_path / "single", steps=1), progress=False)
    (want,) = single.run()
    cfg = make_config(tmp_path, tok_dir, tmp_path / "double", steps=1)
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    command = [_genevolve(), "evolve", "--config", str(path)]
    result = _launch(command)
    assert result.returncode == 0, result.stderr[-3000:]
    (got,) = [json.loads(line) for line in (tmp_path / "double" / "metrics.jsonl").read_text().splitlines()]
    assert (want["processes"], got["processes"]) == (1, 2)
    learner_keys = ("loss", "grpo_loss", "ved_loss", "grad_norm", "clip_frac_low", "clip_frac_high",
                    "teacher_student_gap", "logp_gap_mean", "logp_gap_max")
    assert want["teacher_student_gap"] is not None  # step 0 had bundles, so the gap is compared
    skip = (*learner_keys, "processes")
    rest = {k: v for k, v in _comparable(want).items() if k not in skip}  # the rollouts: exactly the same
    assert {k: v for k, v in _comparable(got).items() if k not in skip} == json.loads(json.dumps(rest))
    for key in learner_keys:
        # float32 sums of terms of either sign over other micro-batch shapes: noise of ~1e-5 on totals of ~0.03
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), key
    start = {n: p.detach() for n, p in EvolveRun(make_config(tmp_path, tok_dir, tmp_path / "fresh", steps=1),
                                                  progress=False).tm.model.named_parameters()}
    a = torch.load(latest_checkpoint(tmp_path / "single") / "state.pt", weights_only=False)["learner"]["trainable"]
    b = torch.load(latest_checkpoint(tmp_path / "double") / "state.pt", weights_only=False)["learner"]["trainable"]
    moved = 0
    for name, value in a.items():
        # Adam's first steps move a weight by up to lr (1e-2) whatever the gradient's size, so entries whose
        # gradient is near zero turn float noise (another summation order) into visible differences, and
        # VED's top-10 % selection can flip on near-ties: allow a few entries to differ by a tenth of a step.
        far = (b[name] - value).abs() > 1e-3
        assert far.float().mean() < 0.01, (name, float(far.float().mean()))
        moved += int(((value - start[name]).abs() > 1e-3).sum())
    assert moved > 1000  # the step did move the weights

    # Extend the run to two steps: a resumed run must match config.yaml, and `steps` changes the schedule, so
    # extending means saying so there (docs/training.md, "Resume").
    saved = yaml.safe_load((tmp_path / "double" / "config.yaml").read_text())
    saved["evolve"]["steps"] = 2
    (tmp_path / "double" / "config.yaml").write_text(yaml.safe_dump(saved))
    result = _launch([*command, "--steps", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "double" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
    assert latest_checkpoint(tmp_path / "double").name == "step-000001"


def test_sft_on_two_processes_matches_one_and_resumes(tmp_path):
    """Micro-batches are dealt out over two processes (three a step: uneven on purpose); the losses,
    evaluations and final weights equal a one-process run's, and a relaunch resumes from a checkpoint."""
    import json

    from tests.test_evolve_sft import metric_lines

    settings = {"max_steps": 4, "grad_accum": 3, "batch_size": 2, "context_loss": 1.0, "context_frac": 0.5}
    command = launch_sft_pair(tmp_path, {}, **settings)

    def same_records(got, want):
        same_sft_records(got, want, rel=1e-4)

    def same_weights(a_dir, b_dir):
        same_final_weights(a_dir, b_dir, rtol=1e-3, atol=1e-5)

    want = metric_lines(tmp_path / "single")
    assert any(r["kind"] == "eval" for r in want) and all("context_loss" in r for r in want if r["kind"] == "train")
    assert json.loads((tmp_path / "double" / "data.json").read_text())["processes"] == 2
    same_records(metric_lines(tmp_path / "double"), want)
    same_weights(tmp_path / "single", tmp_path / "double")

    # Lose everything after the step-2 checkpoint; a relaunch resumes there and ends the same.
    out = tmp_path / "double"
    shutil.rmtree(out / "checkpoints" / "step-000004")
    shutil.rmtree(out / "final")
    result = _launch(command)
    assert result.returncode == 0, result.stderr[-3000:]
    same_records(metric_lines(out), want)
    same_weights(tmp_path / "single", out)


def test_a_launched_process_leaves_after_its_exit_handlers_with_its_output_flushed(tmp_path):
    """``leave_launched_process`` skips only what follows Python's own shutdown: exit handlers still run,
    buffered output still arrives, and the status is 0; without an accelerator it does nothing."""
    marker = tmp_path / "handler-ran"
    script = (
        "import atexit, pathlib, sys\n"
        "from genevolve.evolve.parallel import leave_launched_process\n"
        f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes'))\n"
        "leave_launched_process(None)\n"
        "sys.stdout.write('still here, unflushed')\n"
        "leave_launched_process(object())\n"
        "raise SystemExit(3)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                                 "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "still here, unflushed"  # block-buffered (a pipe): lost unless flushed
    assert marker.read_text() == "yes"

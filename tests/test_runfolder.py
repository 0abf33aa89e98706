"""The run folder shared by sft, evolve and bench: fsynced JSONL with torn-line repair and truncate-by-step,
atomic checkpoints with RNG states (older layouts still load), the config refusal, the LR schedule."""

from __future__ import annotations

import json
import math
import random

import pytest
import yaml

from genevolve.registry import ConfigError
from genevolve.runfolder import (
    JsonlLog,
    RunFolderError,
    check_config,
    checkpoint_step,
    config_changes,
    cosine_with_warmup,
    latest_checkpoint,
    load_checkpoint,
    lr_schedule,
    save_checkpoint,
    save_config,
)

torch = pytest.importorskip("torch")


def test_jsonl_appends_and_cuts_a_torn_last_line(tmp_path):
    log = JsonlLog(tmp_path / "sub" / "m.jsonl")
    assert log.read() == []
    log.append({"step": 0, "text": "é"})
    log.append(json.dumps({"step": 1}))
    with open(log.path, "a") as fh:
        fh.write('{"step": 2, "x": ')  # a kill mid-write
    assert log.read() == [{"step": 0, "text": "é"}, {"step": 1}]
    assert log.path.read_text(encoding="utf-8").endswith('{"step": 1}\n')  # the next append starts a clean line
    log.append({"step": 2})
    assert [r["step"] for r in log.read()] == [0, 1, 2]
    # a complete last line that is not a JSON object is torn too; a bad line before others is corruption
    log.path.write_text('{"step": 0}\n[1, 2]\n\n')
    assert log.read() == [{"step": 0}] and log.path.read_text() == '{"step": 0}\n'
    log.path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(RunFolderError, match="m.jsonl:2"):
        log.read()


def test_keep_steps_drops_later_steps_and_torn_lines(tmp_path):
    log = JsonlLog(tmp_path / "m.jsonl")
    log.path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "x": ')
    assert log.keep_steps(1) == 1  # the record of step 2; the torn line is cut off as it is read
    assert log.path.read_text() == '{"step": 0}\n{"step": 1}\n'
    log.path.write_text('{"p": {"step": 0}}\n{"p": {"step": 4}}\n')
    assert log.keep_steps(0, step_of=lambda r: r["p"]["step"]) == 1 and log.read() == [{"p": {"step": 0}}]


def test_checkpoints_are_atomic_keep_the_newest_and_restore_rng(tmp_path):
    def write_model(folder):
        folder.mkdir(parents=True)
        (folder / "weights").write_text("w")

    def broken(folder):
        write_model(folder)
        raise KeyboardInterrupt  # a kill while the model is written

    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"w": torch.tensor([float(step)])}, keep=2, write_model=write_model)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 3, {}, keep=2, write_model=broken)
    assert latest_checkpoint(tmp_path).name == "step-000002"  # the cut-short save is a hidden .tmp folder
    random.seed(5)
    torch.manual_seed(5)
    folder = save_checkpoint(tmp_path, 3, {"w": torch.tensor([3.0])}, keep=2, write_model=write_model)
    want = (random.random(), torch.rand(2))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    random.seed(0)
    torch.manual_seed(0)
    state = load_checkpoint(folder)
    assert state["step"] == 3 and state["w"].item() == 3.0 and (folder / "model" / "weights").is_file()
    got = (random.random(), torch.rand(2))
    assert got[0] == want[0] and torch.equal(got[1], want[1])  # the run goes on as if never stopped


def test_checkpoints_of_the_older_layouts_still_load(tmp_path):
    """SFT's step-N/trainer.pt and evolve's step_N/learner.pt + complete.json, from before this module."""
    sft, evolve = tmp_path / "sft" / "checkpoints" / "step-000004", tmp_path / "ev" / "checkpoints" / "step_000002"
    sft.mkdir(parents=True)
    evolve.mkdir(parents=True)
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": None}
    torch.save({"step": 4, "trainable": {}, "rng": rng}, sft / "trainer.pt")
    torch.save({"step": 2, "learner": {"x": 1}, "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()},
               evolve / "learner.pt")
    assert latest_checkpoint(tmp_path / "ev") is None  # no complete.json yet: a save cut short
    (evolve / "complete.json").write_text("{}")
    assert latest_checkpoint(tmp_path / "sft") == sft and checkpoint_step(sft) == 4
    assert latest_checkpoint(tmp_path / "ev") == evolve and checkpoint_step(evolve) == 2
    assert load_checkpoint(evolve)["learner"] == {"x": 1} and load_checkpoint(sft)["step"] == 4
    save_checkpoint(tmp_path / "ev", 3, {"learner": {}}, keep=1)  # a resumed run's next save prunes the old ones
    assert [p.name for p in (tmp_path / "ev" / "checkpoints").iterdir()] == ["step-000003"]


def test_a_changed_config_is_refused_naming_its_keys(tmp_path):
    saved = {"model": {"path": "m", "lora": None}, "sft": {"lr": 0.01, "save_every": 2, "data": ["a"]}}
    save_config(tmp_path, saved)
    new = {"model": {"path": "m", "lora": {"r": 4}}, "sft": {"lr": 0.001, "save_every": 5, "data": ["a"], "x": 1}}
    assert config_changes(saved, new, resumable=("sft.save_every",)) == {
        "model.lora": (None, "<unset>"), "model.lora.r": ("<unset>", 4), "sft.lr": (0.01, 0.001), "sft.x": ("<unset>", 1)}
    assert list(config_changes(saved, new, only=("sft.lr", "sft.data"))) == ["sft.lr"]
    with pytest.raises(ConfigError) as info:
        check_config(tmp_path / "config.yaml", new, command="SFT", resumable=("sft.save_every", "sft.x"),
                     hint="rerun with --fresh")
    message = str(info.value)
    assert "sft.lr: 0.01 -> 0.001" in message and "model.lora.r" in message and "save_every:" not in message
    assert "--fresh" in message and str(tmp_path / "config.yaml") in message
    check_config(tmp_path / "config.yaml", {**saved, "sft": {**saved["sft"], "save_every": 9}}, command="SFT",
                 resumable=("sft.save_every",))  # a resumable change passes
    # normalise: a snapshot written before a field existed compares with the field's default
    check_config(tmp_path / "config.yaml", {**saved, "new_field": 0}, command="SFT",
                 normalise=lambda d: {**d, "new_field": 0})
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == saved
    check_config(tmp_path / "missing.yaml", new, command="SFT")  # nothing to resume, nothing to refuse


def test_one_schedule_warms_up_then_decays_to_its_floor():
    f = cosine_with_warmup(total=10, warmup=2, min_frac=0.2)
    assert [f(0), f(1), f(2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f(6) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.5))) and f(10) == f(50) == pytest.approx(0.2)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.5)
    scheduler = lr_schedule(optimizer, total=10, warmup_frac=0.15, min_frac=0.2)  # ceil(1.5) = 2 warm-up updates
    lrs = []
    for _ in range(11):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.5 * f(s) for s in range(11)])
    # the RL learner runs the same schedule, over steps x mini_batches updates
    from genevolve.evolve import learner

    assert learner.lr_schedule is lr_schedule

"""SFT on tiny models (from config, or pretrained + LoRA) with rows made here: it learns, resumes
exactly, keeps the run folder honest, and its output loads back as a policy."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from genevolve.evolve.model import load_model  # noqa: E402
from genevolve.evolve.sft import evaluate, run_sft  # noqa: E402
from genevolve.evolve.sft_data import micro_batches  # noqa: E402
from genevolve.evolve.tokens import ChatEncoder  # noqa: E402
from genevolve.evolve.train_config import ModelSpec, SFTFile  # noqa: E402
from genevolve.policy.base import Sampling  # noqa: E402
from genevolve.policy.hf import HFPolicy  # noqa: E402
from genevolve.registry import ConfigError  # noqa: E402
from genevolve.runfolder import cosine_with_warmup  # noqa: E402
from tests.test_policy_hf import llava, make_llama, make_tokenizer  # noqa: E402, F401

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512}
SUBJECTS = ["red fox", "blue car", "green tree", "white cat", "black dog", "yellow sun"]
TIME_FIELDS = ("seconds", "tokens_per_s")


def row(subject: str) -> dict:
    return {"messages": [
        {"role": "system", "content": "You are a planner."},
        {"role": "user", "content": f"draw a {subject}"},
        {"role": "assistant", "content": f'<think>search first</think>\n<tool_call>{{"name": "image_search", '
                                         f'"arguments": {{"query": "{subject}"}}}}</tool_call>'},
        {"role": "user", "content": "<tool_response>\nIMG_001: fox\n</tool_response>"},
        {"role": "assistant", "content": f'<think>use IMG_001</think>\n<answer>{{"gen_prompt": "a {subject}", '
                                         '"reference_images": [{"img_id": "IMG_001", "note": "subject"}]}</answer>'},
    ], "images": []}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    tok = make_tokenizer()
    make_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data" / "sft.jsonl"
    path.parent.mkdir()
    lines = [json.dumps(row(s)) for s in SUBJECTS * 2]
    lines.append("{not json")
    lines.append(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}))
    lines.append(json.dumps(row("very " * 300 + "long thing")))
    lines.append(json.dumps({**row("failed expert"), "ok": False}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config(out, data, model, **sft) -> SFTFile:
    settings = {"data": [str(data)], "out": str(out), "lr": 1e-2, "grad_accum": 2, "batch_size": 2,
                "eval_frac": 0.2, "eval_every": 2, "save_every": 2, "max_tokens": 400, **sft}
    return SFTFile.model_validate({"model": model, "sft": settings})


def metric_lines(out):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in rec.items() if k not in TIME_FIELDS} for rec in lines]


def trainable(tm_or_model):
    model = getattr(tm_or_model, "model", tm_or_model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_tiny_model_from_config_learns_and_loads_back(tmp_path, tok_dir, data):
    out = tmp_path / "run"
    result = run_sft(config(out, data, {"path": str(tok_dir), "from_config": TINY}, epochs=20, lr=3e-2,
                            eval_every=10, save_every=20), progress=False)
    report = json.loads((out / "data.json").read_text())
    assert report["n_train"] + report["n_eval"] == 12 and report["n_eval"] == 3
    reasons = sorted(s["reason"].split(":")[0] for s in report["skipped"])
    assert reasons == ["TokenViewError", "ValueError", "not_ok", "too_long"]
    lines = metric_lines(out)
    train = [x for x in lines if x["kind"] == "train"]
    evals = [x for x in lines if x["kind"] == "eval"]
    assert [x["step"] for x in train] == list(range(1, result.steps + 1))
    assert result.steps == 20 * math.ceil(9 / 2) // 2  # 5 micro-batches per epoch (the last of 1 row), 2 per step
    assert train[-1]["epoch"] == 20.0
    assert train[0]["loss"] == pytest.approx(math.log(320), rel=0.05)  # untrained: uniform over the vocab
    assert train[-1]["loss"] < 0.6 * train[0]["loss"]
    assert evals[-1]["eval_loss"] < min(0.6 * train[0]["loss"], evals[0]["eval_loss"])
    assert evals[-1]["step"] == result.steps
    assert train[0]["lr"] == pytest.approx(train[1]["lr"] / 2)  # warm-up: ceil(2 % of 50 steps) = 1 step
    assert (out / "final" / "model.json").is_file() and (out / "config.yaml").is_file()
    # final/ holds the trained weights: reloaded, they give the last eval loss again.
    tm = load_model(ModelSpec(path=str(out / "final")))
    held = [row(s) for s in SUBJECTS * 2]
    held = [held[int(i.split(":")[1]) - 1] for i in report["eval_ids"]]
    views = [ChatEncoder(tm.tokenizer).view_sft_row(r) for r in held]
    assert evaluate(tm, views, batch_size=3) == pytest.approx(evals[-1]["eval_loss"], rel=1e-6)
    policy = HFPolicy(out / "final", dtype="float32")
    assert isinstance(policy.chat(_prompt(), sampling=Sampling(temperature=0.0, max_tokens=4)), str)


def _prompt():
    from genevolve.types import Turn

    return [Turn(role="system", content="You are a planner."), Turn(role="user", content="draw a red fox")]


def test_resume_continues_exactly(tmp_path, tok_dir, data):
    model = {"path": str(tok_dir), "from_config": TINY}
    out = tmp_path / "run"
    straight = run_sft(config(out, data, model, max_steps=4, keep_checkpoints=2), progress=False)
    want_lines = metric_lines(out)
    want_params = trainable(load_model(ModelSpec(path=str(out / "final"))))
    # Simulate a crash after step 3: the step-4 checkpoint and final weights never got written, a
    # half-written checkpoint folder lies around, and metrics.jsonl holds a line for step 3 and a torn line.
    import shutil

    shutil.rmtree(out / "checkpoints" / "step-000004")
    shutil.rmtree(out / "final")
    (out / "checkpoints" / ".tmp-step-000004").mkdir()
    with (out / "metrics.jsonl").open("w") as f:
        f.write("".join(json.dumps(x) + "\n" for x in want_lines if x["step"] <= 3) + '{"step": 4, "ki')
    resumed = run_sft(config(out, data, model, max_steps=4, keep_checkpoints=2), progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == straight.steps == 4
    assert metric_lines(out) == want_lines  # no step lost or duplicated, same numbers
    got_params = trainable(load_model(ModelSpec(path=str(out / "final"))))
    assert all(torch.equal(got_params[n], want_params[n]) for n in want_params)
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "step-000002", "step-000004"]
    # A different config refuses to resume; --fresh starts over.
    with pytest.raises(ConfigError, match="sft.lr"):
        run_sft(config(out, data, model, max_steps=4, lr=1e-3), progress=False)
    again = run_sft(config(out, data, model, max_steps=2, lr=1e-3), fresh=True, progress=False)
    assert again.resumed_from == 0 and [x["step"] for x in metric_lines(out) if x["kind"] == "train"] == [1, 2]


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path, tok_dir, data):
    model = {"path": str(tok_dir), "from_config": TINY}
    out = tmp_path / "run"
    run_sft(config(out, data, model, max_steps=2), progress=False)
    with pytest.raises(ConfigError) as info:
        run_sft(config(out, data, model, max_steps=3, lr=1e-3), progress=False)
    message = str(info.value)
    assert "sft.lr: 0.01 -> 0.001" in message and "sft.max_steps: 2 -> 3" in message and "--fresh" in message
    # keys that cannot change the result may change: the run resumes (here with nothing left to do)
    again = run_sft(config(out, data, model, max_steps=2, eval_every=1, save_every=5, keep_checkpoints=3),
                    progress=False)
    assert again.resumed_from == 2 and [x["step"] for x in metric_lines(out) if x["kind"] == "train"] == [1, 2]


@pytest.mark.parametrize("kill_at", ["fsync 6", "save 2"])
def test_sigkill_mid_run_then_rerun_loses_and_repeats_no_step(tmp_path, tok_dir, data, kill_at):
    """A real `genevolve sft` process killed with SIGKILL, then the same command again. ``fsync 6``: while it
    writes the step-4 eval line (torn), after the step-3 checkpoint; ``save 2``: inside the step-6 checkpoint,
    before it is complete. The rerun resumes from step 3 and ends with an uninterrupted run's metrics."""
    import signal

    import yaml
    from typer.testing import CliRunner

    from genevolve.cli import app
    from tests.sigkill import run_killed

    model, settings = {"path": str(tok_dir), "from_config": TINY}, {"epochs": 4, "max_steps": 8, "save_every": 3}
    run_sft(config(tmp_path / "ref", data, model, **settings), progress=False)
    out = tmp_path / "run"
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config(out, data, model, **settings).model_dump(mode="json")))
    killed = run_killed(kill_at, "sft", "--config", path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert not (out / "final").exists()
    result = CliRunner().invoke(app, ["sft", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "resumed from step 3" in result.output
    got, want = metric_lines(out), metric_lines(tmp_path / "ref")
    assert [(x["step"], x["kind"]) for x in got] == [(x["step"], x["kind"]) for x in want]  # each step once
    for a, b in zip(got, want, strict=True):  # the same numbers (float noise aside: one part ran in another process)
        assert {k: v for k, v in a.items() if k != "kind"} == pytest.approx({k: v for k, v in b.items() if k != "kind"},
                                                                             rel=1e-5)


def test_lora_trains_only_the_adapter(tmp_path, base_dir, data):
    out = tmp_path / "lora"
    model = {"path": str(base_dir), "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    before = dict(transformers.AutoModelForCausalLM.from_pretrained(base_dir).named_parameters())
    run_sft(config(out, data, model, max_steps=3, lr=5e-2), progress=False)
    final = out / "final"
    assert (final / "adapter_config.json").is_file() and json.loads((final / "model.json").read_text())["kind"] == "lora"
    tm = load_model(ModelSpec(path=str(final)))  # an adapter folder loads as base + adapter, trainable
    assert tm.is_lora and tm.trainable_parameters()
    lora_b = [p for n, p in tm.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # every adapter matrix moved off zero
    for name, param in tm.model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, before[key]), name  # the base stayed frozen
    policy = HFPolicy(base_dir, dtype="float32", adapter=final)
    assert isinstance(policy.chat(_prompt(), sampling=Sampling(temperature=0.0, max_tokens=4)), str)


class _GradientCapture:
    """An optimizer stand-in that keeps the gradient it is asked to apply (and applies nothing)."""

    def __init__(self, params):
        self.params, self.grads = params, None

    def step(self):
        self.grads = [p.grad.detach().clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def test_accumulated_gradient_equals_the_big_batch_gradient(tok_dir):
    """What accumulation means: four micro-batches of one row give the gradient of the token mean over
    all four rows, which is the one-batch gradient of -sum(logp over assistant tokens) / n_tokens.
    (Comparing weights after an AdamW step cannot show this: Adam's first step is about ±lr per entry,
    so float noise on a near-zero gradient entry flips it by 2·lr.)"""
    from genevolve.evolve import sft as sft_module
    from genevolve.evolve.tokens import collate, token_logps

    tm = load_model(ModelSpec(path=str(tok_dir), from_config=TINY))
    encoder = ChatEncoder(tm.tokenizer)
    views = [encoder.view_sft_row(row(s)) for s in ("red fox", "a much longer white cat name", "sun", "blue car")]
    params = tm.trainable_parameters()
    accumulated = _GradientCapture(params)
    sft_module._train_step(tm, [[v] for v in views], None, accumulated, params)
    batch = collate(views, tm.pad_id)  # the reference: the loss's definition, on one padded batch
    logp_B_T = token_logps(tm.model, batch)
    (-(logp_B_T * batch.mask_B_T).sum() / batch.mask_B_T.sum()).backward()
    scale = max(float(p.grad.abs().max()) for p in params)
    for got, p in zip(accumulated.grads, params, strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-5 * scale)


def test_accumulation_runs_the_same_rows_as_one_big_batch(tmp_path, tok_dir, data):
    model = {"path": str(tok_dir), "from_config": TINY}
    common = {"max_steps": 1, "eval_frac": 0.0, "max_grad_norm": None, "warmup_frac": 0.0}
    run_sft(config(tmp_path / "a", data, model, batch_size=1, grad_accum=4, **common), progress=False)
    run_sft(config(tmp_path / "b", data, model, batch_size=4, grad_accum=1, **common), progress=False)
    a, b = metric_lines(tmp_path / "a")[0], metric_lines(tmp_path / "b")[0]
    assert a["tokens"] == b["tokens"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_schedule_and_batches():
    f = cosine_with_warmup(total=100, warmup=2, min_frac=0.1)
    assert [f(0), f(1), f(2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert f(51) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    batches = micro_batches(10, 3, 1.5, seed=0)
    assert sum(len(b) for b in batches) == 15 and batches == micro_batches(10, 3, 1.5, seed=0)
    assert sorted(i for b in batches[:4] for i in b) == list(range(10))  # epoch 1 covers every row once
    assert batches != micro_batches(10, 3, 1.5, seed=1)


def test_bad_configs(tmp_path, tok_dir, data):
    with pytest.raises(ConfigError, match="does not exist"):
        run_sft(config(tmp_path / "x", tmp_path / "missing.jsonl", {"path": str(tok_dir), "from_config": TINY}),
                progress=False)
    with pytest.raises(ConfigError, match="model_type"):
        load_model(ModelSpec(path=str(tok_dir), from_config={"hidden_size": 8}))
    with pytest.raises(ConfigError, match="not both"):
        load_model(ModelSpec(path=str(tok_dir), lora={"r": 2}, adapter=str(tmp_path)))
    with pytest.raises(ValueError, match="extra"):
        SFTFile.model_validate({"sft": {"data": ["x"], "learning_rate": 1.0}})


def test_cli_sft(tmp_path, tok_dir, data):
    import yaml
    from typer.testing import CliRunner

    from genevolve.cli import app

    cfg = {"model": {"path": str(tok_dir), "from_config": TINY},
           "sft": {"data": [str(data.parent)], "lr": 1e-2, "batch_size": 4, "grad_accum": 1}}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(app, ["sft", "--config", str(path), "--out", str(out), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "2 steps" in result.output and (out / "final" / "model.json").is_file()
    result = CliRunner().invoke(app, ["sft", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "does not exist" in " ".join(result.output.split())


def test_vlm_sft_sees_images_and_keeps_the_vision_tower_frozen(tmp_path, llava):  # noqa: F811
    from PIL import Image

    model, processor = llava
    model.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    (tmp_path / "data" / "images").mkdir(parents=True)
    rows = []
    for i, colour in enumerate(((200, 80, 0), (0, 0, 255), (0, 160, 0))):
        Image.new("RGB", (40, 30), colour).save(tmp_path / "data" / "images" / f"{i}.png")
        r = row(SUBJECTS[i])
        r["messages"][3]["content"] = "<tool_response>\nIMG_001: fox\n<image>\n</tool_response>"
        r["images"] = [f"images/{i}.png"]
        rows.append(json.dumps(r))
    (tmp_path / "data" / "sft.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    run_sft(config(out, tmp_path / "data" / "sft.jsonl", {"path": str(tmp_path / "vlm")}, max_steps=2, eval_frac=0.0),
            progress=False)
    trained = dict(transformers.LlavaForConditionalGeneration.from_pretrained(out / "final").named_parameters())
    before = dict(model.named_parameters())
    vision = [n for n in before if ".vision_tower." in f".{n}"]
    assert vision and all(torch.equal(trained[n], before[n]) for n in vision)
    language = [n for n in before if "language_model" in n]
    assert language and all(not torch.equal(trained[n], before[n]) for n in language if n.endswith("q_proj.weight"))


def test_system_env_trains_with_the_rollout_agents_prompt(tmp_path, tok_dir, data):
    from genevolve.agent import agent_system_prompt
    from genevolve.evolve.sft_data import load_examples
    from genevolve.evolve.train_config import env_run_config
    from genevolve.tools import build_tools

    env = {"search": None, "image_search": None, "renderer": None, "judge": None,
           "agent": {"prompt": "compact", "max_policy_calls": 3, "max_tool_calls": 2}}
    cfg = SFTFile.model_validate({"model": {"path": str(tok_dir), "from_config": TINY}, "env": env,
                                  "sft": {"data": [str(data)], "system": "env"}})
    system = cfg.system_prompt()
    run = env_run_config(env)
    assert (run.agent.prompt, run.agent.max_policy_calls, run.agent.max_tool_calls) == ("compact", 3, 2)
    assert system == agent_system_prompt(build_tools(search=run.search, image_search=run.image_search), run.agent)
    assert "At most 3 messages and 2 tool calls" in system and "You are a planner." not in system
    encoder = ChatEncoder(make_tokenizer())
    examples, _ = load_examples([str(data)], encoder, 4000, system=system)
    text = encoder.tokenizer.decode(examples[0].view.input_ids)
    assert system in text and "You are a planner." not in text
    kept, _ = load_examples([str(data)], encoder, 4000)
    assert "You are a planner." in encoder.tokenizer.decode(kept[0].view.input_ids)
    # assistant tokens are the same whichever system message precedes them
    assert examples[0].view.assistant_ids == kept[0].view.assistant_ids
    assert SFTFile.model_validate({"sft": {"data": ["x"]}}).system_prompt() is None
    with pytest.raises(ConfigError, match="needs an `env` section"):
        SFTFile.model_validate({"sft": {"data": ["x"], "system": "env"}}).system_prompt()


def test_context_loss_scores_only_sampled_context_positions(tmp_path, tok_dir, data):
    out = tmp_path / "ctx"
    run_sft(config(out, data, {"path": str(tok_dir), "from_config": TINY}, epochs=6, lr=3e-2,
                   context_loss=0.5, context_frac=1.0), progress=False)
    train = [m for m in metric_lines(out) if m["kind"] == "train"]
    assert all("context_loss" in m for m in train)
    assert train[-1]["context_loss"] < train[0]["context_loss"] and train[-1]["loss"] < train[0]["loss"]
    plain = tmp_path / "plain"
    run_sft(config(plain, data, {"path": str(tok_dir), "from_config": TINY}, epochs=1), progress=False)
    assert all("context_loss" not in m for m in metric_lines(plain))


def test_context_mask_never_touches_assistant_or_padding(tok_dir, monkeypatch):
    from genevolve.evolve import sft as sft_module
    from genevolve.evolve.tokens import collate

    tm = load_model(ModelSpec(path=str(tok_dir), from_config=TINY))
    encoder = ChatEncoder(tm.tokenizer)
    views = [encoder.view_sft_row(row("red fox")), encoder.view_sft_row(row("a much longer white cat name"))]
    seen = {}
    real = sft_module.token_logps

    def spy(model, batch, **kw):
        seen["mask"] = batch.mask_B_T.clone()
        return real(model, batch, **kw)

    monkeypatch.setattr(sft_module, "token_logps", spy)
    params = tm.trainable_parameters()
    sft_module._train_step(tm, [views], None, torch.optim.SGD(params, lr=0.0), params, context=(1.0, 1.0, 7))
    plain = collate(views, tm.pad_id)
    context = seen["mask"] & ~plain.mask_B_T.bool()
    assert bool((seen["mask"].bool() >= plain.mask_B_T.bool()).all())  # assistant positions still scored
    assert not bool((context & ~plain.attention_B_T.bool()).any())  # no padding
    assert int(context.sum()) == int(plain.attention_B_T.sum() - plain.mask_B_T.sum()) - 2  # all but first tokens


def test_autocast_bf16_trains_in_mixed_precision_and_keeps_float32_weights(tmp_path, base_dir, data):
    model = {"path": str(base_dir), "lora": {"r": 4, "alpha": 8, "target_modules": "all-linear"}}
    runs = {}
    for name, extra in (("fp32", {}), ("bf16", {"autocast": "bfloat16"})):
        run_sft(config(tmp_path / name, data, {**model, **extra}, max_steps=3, lr=5e-2), progress=False)
        runs[name] = [x for x in metric_lines(tmp_path / name) if x["kind"] in ("train", "eval")]
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert [x["step"] for x in fp32] == [x["step"] for x in bf16]
    losses = [(a.get("loss", a.get("eval_loss")), b.get("loss", b.get("eval_loss"))) for a, b in zip(fp32, bf16, strict=True)]
    # bfloat16 keeps 8 bits of mantissa: the same run to about 1 %, but not bit for bit (autocast was on)
    assert all(b == pytest.approx(a, rel=0.03) for a, b in losses) and any(a != b for a, b in losses)
    tm = load_model(ModelSpec(path=str(tmp_path / "bf16" / "final"), autocast="bfloat16"))
    assert {p.dtype for p in tm.trainable_parameters()} == {torch.float32}
    linear = next(m for m in tm.model.modules() if isinstance(m, torch.nn.Linear))
    x = torch.ones(1, linear.in_features)
    with tm.autocast():
        assert linear(x).dtype == torch.bfloat16
    assert linear(x).dtype == torch.float32


def test_autocast_is_refused_with_fsdp():
    with pytest.raises(ValueError, match="fsdp_compute_dtype"):
        ModelSpec(path="x", fsdp=True, autocast="bfloat16")

"""The RL loop end to end on a tiny random model: sample -> score -> select -> extract -> teacher -> loss ->
update, metrics, checkpoints, and a resume after a crash mid-step that redoes exactly the lost step."""

from __future__ import annotations

import json
import os
import uuid

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llguidance")

from PIL import Image  # noqa: E402

from genevolve.evolve.loop import EvolveRun  # noqa: E402
from genevolve.evolve.rl_config import EvolveFile  # noqa: E402
from genevolve.evolve.train_config import LoraSpec  # noqa: E402
from genevolve.runfolder import latest_checkpoint  # noqa: E402
from genevolve.tools.base_search import ImageSearchBackend  # noqa: E402
from genevolve.types import RetrievedImage  # noqa: E402
from tests.test_policy_hf import CORPUS, TEMPLATE  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 8192}
REQUESTS = ["a red apple on the left", "two blue cars", "a green tree at night", "a white cat"]
TIMING = ("seconds", "tokens_per_s", "peak_rss_mb", "teacher_cost_ratio")


class ColorImages(ImageSearchBackend):
    """Two coloured squares per query (written once into ``folder``)."""

    name = "colors"

    def __init__(self, folder: str):
        self.folder = folder

    async def search(self, query, top_k):
        out = []
        for i, colour in enumerate([(200, 30, 30), (30, 30, 200)][:top_k]):
            path = f"{self.folder}/{i}.png"
            # written beside, then renamed: a concurrent rollout must never read a half-written file (it
            # would count as an unusable reference, a failure the run being compared does not have)
            tmp = f"{path}.{uuid.uuid4().hex}.png"
            Image.new("RGB", (16, 16), colour).save(tmp)
            os.replace(tmp, path)
            out.append(RetrievedImage(title=f"{query} {i}", path=path))
        return out


def make_tokenizer():
    """A 1,500-token BPE trained on the agent's own system prompt: the prompt becomes ~1.5k tokens
    instead of ~6.6k with a byte-level toy vocabulary, which keeps these CPU tests short."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from genevolve import prompts
    from genevolve.tools.image_search import ImageSearchTool

    system = prompts.system_prompt([ImageSearchTool(ColorImages("/tmp"))], max_policy_calls=2, max_tool_calls=1,
                                   min_references=1, max_references=1)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([system, *REQUESTS, *CORPUS] * 4, trainer)
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    hf_tok.chat_template = TEMPLATE
    return hf_tok


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    make_tokenizer().save_pretrained(folder)
    return folder


def make_config(tmp_path, tok_dir, out, **evolve) -> EvolveFile:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (tmp_path / "lib").mkdir(exist_ok=True)
    rows = []
    for i, request in enumerate(REQUESTS):
        Image.new("RGB", (32, 32), (60 * i, 100, 50)).save(data / "images" / f"{i}.png")
        rows.append({"id": f"r{i}", "question": request, "gt_image": f"images/{i}.png"})
    (data / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"policy": {"kind": "scripted", "responses": []}, "search": None,
           "image_search": {"kind": "tests.test_evolve_loop:ColorImages", "folder": str(tmp_path / "lib")},
           "knowledge": False, "renderer": {"kind": "collage", "width": 128, "height": 128},
           "judge": {"kind": "heuristic", "embeddings": False},
           "agent": {"max_policy_calls": 2, "max_tool_calls": 1, "min_references": 1, "max_references": 1,
                     "structured_decoding": True, "sampling": {"max_tokens": 700}}}
    settings = {"data": str(data / "rl.jsonl"), "out": str(out), "steps": 3, "requests_per_step": 2, "k": 2, "think_max_chars": 12,
                "alpha": 0.0, "lr": 1e-2, "micro_batch": 2, "mini_batches": 2, "save_every": 1,
                "tensorboard": False, "experience": {"min_gap": 0.0}, **evolve}
    return EvolveFile.model_validate({"model": {"path": str(tok_dir), "from_config": TINY}, "env": env,
                                      "evolve": settings})


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _comparable(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING}


def test_steps_learn_write_and_resume_exactly(tmp_path, tok_dir):
    ref_out = tmp_path / "ref"
    run = EvolveRun(make_config(tmp_path, tok_dir, ref_out), progress=False)
    metrics = run.run()
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert m["rollouts"] == 4 and m["rows"] + m["rows_skipped"] == 4
        assert set(m["seconds"]) >= {"sample", "select", "extract", "views", "old", "teacher", "update"}
        assert m["grpo_loss"] == m["grpo_loss"] and m["ved_loss"] >= 0  # finite
        assert 1 <= m["policy_calls"] <= 2 and 0 <= m["tool_calls"] <= 1  # the config's budgets
    rows = _lines(ref_out / "trajectories.jsonl")
    assert metrics[0]["policy_calls"] == sum(r["trajectory"]["n_policy_calls"] for r in rows[:4]) / 4
    assert any(m["bundle_fraction"] > 0 for m in metrics), "no rollout reached the teacher"
    assert any(m["ved_loss"] > 0 for m in metrics)
    assert len(_lines(ref_out / "trajectories.jsonl")) == 12
    bundles = _lines(ref_out / "experience.jsonl")
    assert bundles and all(b["provenance"]["step"] in (0, 1, 2) for b in bundles)
    assert latest_checkpoint(ref_out).name == "step-000002"
    assert (latest_checkpoint(ref_out) / "model" / "model.json").is_file()

    # A crash during step 2: steps 0-1 checkpointed, step 2's rollouts and bundles partly written,
    # a torn metrics line.
    out = tmp_path / "crashed"
    first = EvolveRun(make_config(tmp_path, tok_dir, out), progress=False)
    first.run(steps=2)
    traj = (ref_out / "trajectories.jsonl").read_text().splitlines()
    with open(out / "trajectories.jsonl", "a") as fh:
        fh.write("\n".join(traj[8:10]) + "\n")
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "reward": 0.')
    with open(out / "experience.jsonl", "a") as fh:
        fh.write("".join(json.dumps(b) + "\n" for b in bundles if b["provenance"]["step"] == 2))

    resumed = EvolveRun(make_config(tmp_path, tok_dir, out), progress=False)
    assert resumed.resume() == 2
    again = resumed.run()
    assert [m["step"] for m in again] == [2]
    lines = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in lines] == [0, 1, 2]  # nothing duplicated, nothing lost
    assert [_comparable(m) for m in lines] == [_comparable(m) for m in _lines(ref_out / "metrics.jsonl")]
    assert len(_lines(out / "trajectories.jsonl")) == 12


def test_advantage_form_and_kl_run(tmp_path, tok_dir):
    pytest.importorskip("tensorboard")
    cfg = make_config(tmp_path, tok_dir, tmp_path / "adv", steps=1, kl_coef=0.01, ved={"form": "advantage"},
                      tensorboard=True)
    (m,) = EvolveRun(cfg, progress=False).run()
    assert m["ved_loss"] == 0 and "reference" in m["seconds"]
    assert list((tmp_path / "adv" / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path, tok_dir, monkeypatch):
    """Before any model loads; keys that cannot change the result (save_every, keep_checkpoints, out, ...) may."""
    import yaml

    from genevolve.evolve import model as model_module
    from genevolve.registry import ConfigError

    out = tmp_path / "run"
    EvolveRun(make_config(tmp_path, tok_dir, out, steps=1), progress=False).run()
    changed = make_config(tmp_path, tok_dir, out, steps=1, lr=1e-3)
    changed.env["renderer"] = {**changed.env["renderer"], "width": 64}  # the resolved env is compared too
    with monkeypatch.context() as patched:
        patched.setattr(model_module, "load_model", lambda *a, **kw: pytest.fail("loaded a model before refusing"))
        with pytest.raises(ConfigError) as info:
            EvolveRun(changed, progress=False)
    message = str(info.value)
    assert "evolve.lr: 0.01 -> 0.001" in message and "env.renderer.width: 128 -> 64" in message
    assert "save_every" in message  # among the keys that may change
    again = EvolveRun(make_config(tmp_path, tok_dir, out, steps=1, save_every=5, keep_checkpoints=3), progress=False)
    assert again.run() == []  # resumed: step 0 is done
    assert yaml.safe_load((out / "config.yaml").read_text())["evolve"]["save_every"] == 5


def test_sigkill_inside_a_checkpoint_then_rerun_loses_and_repeats_no_record(tmp_path, tok_dir):
    """A real `genevolve evolve` process SIGKILLed inside the step-1 checkpoint (after step 1 wrote its
    rollouts, bundles, images and metrics), then the same command again: step 1 is redone from step 0's
    checkpoint, and every log holds each step's records once."""
    import signal

    import yaml
    from typer.testing import CliRunner

    from genevolve.cli import app
    from tests.sigkill import run_killed

    out = tmp_path / "run"
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(make_config(tmp_path, tok_dir, out, steps=2).model_dump(mode="json")))
    killed = run_killed("save 2", "evolve", "--config", path)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert [m["step"] for m in _lines(out / "metrics.jsonl")] == [0, 1]  # step 1 ran; its checkpoint did not finish
    result = CliRunner().invoke(app, ["evolve", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 steps run" in result.output  # resumed from step 0's checkpoint
    metrics = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1]
    rollouts = sorted((r["step"], r["group"], r["sample"]) for r in _lines(out / "trajectories.jsonl"))
    assert rollouts == [(s, g, k) for s in (0, 1) for g in (0, 1) for k in (0, 1)]
    bundles = _lines(out / "experience.jsonl")
    assert [sum(b["provenance"]["step"] == s for b in bundles) for s in (0, 1)] == [m["bundles_added"] for m in metrics]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["step_000000", "step_000001"]


def test_alpha_without_program_judge_is_a_clear_error(tmp_path, tok_dir):
    with pytest.raises(ValueError, match="program_judge"):
        EvolveRun(make_config(tmp_path, tok_dir, tmp_path / "x", alpha=0.5), progress=False)


SERVER_POLICY = {"kind": "openai", "model": "policy", "base_url": "http://127.0.0.1:9/v1"}


@pytest.mark.parametrize("evolve, policy, named", [
    ({"requests_per_step": len(REQUESTS) + 1}, None, "requests_per_step"),
    ({"eval": {"every": 1, "requests": len(REQUESTS)}}, None, "cannot spare"),
    ({"rollout": {"backend": "server"}}, None, "kind 'openai'"),
    ({"rollout": {"backend": "server", "lora_sync": {"servers": ["http://127.0.0.1:9"]}}}, SERVER_POLICY,
     "model.lora"),
], ids=["too-few-requests", "no-requests-to-spare", "server-without-openai-policy", "lora-sync-without-lora"])
def test_configuration_mistakes_are_config_errors_before_the_model_loads(tmp_path, tok_dir, monkeypatch, evolve,
                                                                        policy, named):
    from genevolve.evolve import model
    from genevolve.registry import ConfigError

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the configuration was checked")

    monkeypatch.setattr(model, "load_model", no_loading)
    cfg = make_config(tmp_path, tok_dir, tmp_path / "x", **evolve)
    if policy is not None:
        cfg.env["policy"] = policy
    with pytest.raises(ConfigError, match=named):
        EvolveRun(cfg, progress=False)


def test_server_rollouts_publish_each_adapter_and_switch_model(tmp_path, tok_dir):
    """Rollouts from an OpenAI-compatible server (loopback), the learner's LoRA adapter published to it
    after every step (vLLM's runtime LoRA routes), and the next step's chat requests naming it."""
    from genevolve.protocol import ToolCall, format_turn
    from tests.loopback_http import LoopbackServer, send_json
    from tests.test_evolve_lora_sync import FakeLoraServer

    def chat(h, request):
        body = request.json()
        called = any(m["role"] == "user" and "<tool_response>" in str(m["content"]) for m in body["messages"])
        content = (format_turn("pick", answer={"gen_prompt": "A red apple from the first reference image on the left.",
                                               "reference_images": [{"img_id": "IMG_001", "note": "apple"}]})
                   if called else format_turn("look", tool_call=ToolCall("image_search", {"query": "apple"})))
        send_json(h, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                   "finish_reason": "stop"}]})

    lora = FakeLoraServer()
    with LoopbackServer() as srv:
        srv.routes.update(lora.routes)
        srv.routes["/v1/chat/completions"] = chat
        base = srv.url("").rstrip("/")
        cfg = make_config(tmp_path, tok_dir, tmp_path / "server", steps=2, mini_batches=1, rollout={
            "backend": "server", "lora_sync": {"servers": [base], "backoff_base": 0.01}})
        cfg.env["policy"] = {"kind": "openai", "model": "base", "base_url": f"{base}/v1", "api_key_env": None,
                             "structured": "none"}
        cfg.env["agent"]["structured_decoding"] = False
        cfg.model.lora = LoraSpec(r=4, alpha=8.0)
        metrics = EvolveRun(EvolveFile.model_validate(cfg.model_dump()), progress=False).run()
        models = [r.json()["model"] for r in srv.requests if r.path == "/v1/chat/completions"]
    assert [m["step"] for m in metrics] == [0, 1] and all(m["failures"] == {} for m in metrics)
    assert models[0] == "policy-step-000000" and models[-1] == "policy-step-000001"
    assert list(lora.loaded) == ["policy-step-000001"]  # the previous adapter was unloaded
    assert (tmp_path / "server" / "adapters" / "step_000001" / "adapter_config.json").is_file()


def test_a_failure_on_the_main_process_stops_the_others(tmp_path, tok_dir, monkeypatch):
    accelerate_utils = pytest.importorskip("accelerate.utils")
    from genevolve.evolve.loop import _MainFailed

    class Accelerator:  # what EvolveRun and the Learner read of one
        is_main_process, num_processes, process_index, device = True, 2, 0, "cpu"

    sent = []
    monkeypatch.setattr(accelerate_utils, "broadcast_object_list", lambda box, from_process=0: sent.append(box[0]))
    run = EvolveRun(make_config(tmp_path, tok_dir, tmp_path / "out", steps=1), progress=False,
                    accelerator=Accelerator())

    def broken(step, seconds):
        raise OSError("disk full")

    monkeypatch.setattr(run, "_plan", broken)
    with pytest.raises(OSError, match="disk full"):
        run.step(0)
    assert len(sent) == 1 and isinstance(sent[0], _MainFailed)

    run.is_main = False  # another process receives it and stops with a clear error
    monkeypatch.setattr(accelerate_utils, "broadcast_object_list",
                        lambda box, from_process=0: box.__setitem__(0, _MainFailed()))
    with pytest.raises(RuntimeError, match="main process failed"):
        run.step(0)


def test_evaluation_holds_requests_out_and_repeats_its_seeds(tmp_path, tok_dir):
    out = tmp_path / "eval"
    cfg = make_config(tmp_path, tok_dir, out, steps=3, requests_per_step=1, lr=1e-12,
                      eval={"every": 1, "requests": 2, "k": 2})
    run = EvolveRun(cfg, progress=False)
    held = {t.request for t in run.eval_tasks}
    assert len(held) == 2 and held.isdisjoint({t.request for t in run.tasks})
    assert len(run.tasks) == len(REQUESTS) - 2
    run.run(steps=2)  # stopped after two of the three steps
    records = _lines(out / "eval.jsonl")
    assert [r["step"] for r in records] == [-1, 0, 1]  # before training, then after every step
    assert all(r["rollouts"] == 4 for r in records)
    # A frozen policy (lr 1e-12) with the same seeds scores the same every time.
    assert len({json.dumps(_comparable(r) | {"step": 0}) for r in records}) == 1
    trained = {line["request"] for line in _lines(out / "trajectories.jsonl")}
    assert trained.isdisjoint(held)
    evaluated = _lines(out / "eval_trajectories.jsonl")  # each evaluation's rollouts, under its step
    assert [r["step"] for r in evaluated] == [-1] * 4 + [0] * 4 + [1] * 4
    assert {r["request"] for r in evaluated} == held

    # Resuming keeps the evaluations of checkpointed steps and does not redo the first one.
    resumed = EvolveRun(make_config(tmp_path, tok_dir, out, steps=3, requests_per_step=1, lr=1e-12,
                                    eval={"every": 1, "requests": 2, "k": 2}), progress=False)
    resumed.run()
    assert [r["step"] for r in _lines(out / "eval.jsonl")] == [-1, 0, 1, 2]
    assert [r["step"] for r in _lines(out / "eval_trajectories.jsonl")] == [s for s in (-1, 0, 1, 2) for _ in range(4)]


def test_evaluation_needs_spare_requests(tmp_path, tok_dir):
    cfg = make_config(tmp_path, tok_dir, tmp_path / "x", eval={"every": 1, "requests": len(REQUESTS)})
    with pytest.raises(ValueError, match="cannot spare"):
        EvolveRun(cfg, progress=False)


def test_unscaled_advantages_reach_the_rows(tmp_path, tok_dir):
    run = EvolveRun(make_config(tmp_path, tok_dir, tmp_path / "dr", steps=1, advantage_scale="none"), progress=False)
    sample = run._sample

    def spread_rewards(step):  # the heuristic judge scores this random model's images alike: give them a spread
        groups = sample(step)
        for group in groups:
            for i, rollout in enumerate(group):
                rollout.reward = rollout.reward.model_copy(update={"value": 0.1 * i})
        return groups

    run._sample = spread_rewards
    plan = run._plan(0, {})
    advantages = [adv for _, adv, _ in plan["specs"]]
    assert advantages == pytest.approx([-0.05, 0.05] * 2, abs=1e-6)  # r - mean; the std form gives ±0.707


def test_evolve_refuses_autocast_before_the_model_loads(tmp_path, tok_dir, monkeypatch):
    from genevolve.evolve import model
    from genevolve.registry import ConfigError

    monkeypatch.setattr(model, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check"))
    cfg = make_config(tmp_path, tok_dir, tmp_path / "x")
    cfg.model = cfg.model.model_copy(update={"autocast": "bfloat16"})
    with pytest.raises(ConfigError, match="model.autocast is for SFT"):
        EvolveRun(cfg, progress=False)

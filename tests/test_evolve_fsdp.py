"""Full fine-tuning sharded with FSDP2 (``model.fsdp``) on two CPU processes (torchrun; gloo): SFT and the RL
learner give the one-process update, their checkpoints resume exactly, and the configurations it cannot run
are refused. The two-process runs deal work unevenly on purpose (one process has more micro-batches, more
teacher rows, more evaluation batches), so the zero-weight passes that keep FSDP's collectives in step
are exercised."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("transformers")

from genevolve.registry import ConfigError  # noqa: E402
from tests.test_evolve_accelerate import ROOT, _genevolve  # noqa: E402
from tests.test_evolve_accelerate import _launch as _launch_any  # noqa: E402


def _launch(args: list[str]):
    """Two processes; a process stuck in a collective (unbalanced passes) fails the test in minutes, not
    after the CLI's collective timeout of two hours. A passing launch takes about 10 s."""
    return _launch_any(args, timeout=240)


def test_fsdp_learner_matches_one_process_and_resumes(tmp_path):
    """GRPO + VED + KL (a sharded reference) with 2 mini-batches of 3 rows, micro-batch 1: the sharded
    run's losses, last gradients and weights equal the one-process run's, and a learner that loads the
    checkpoint taken after the first step and takes the second step again ends with the same weights."""
    from tests.fsdp_learner import main

    single = tmp_path / "single.pt"
    main(str(single), fsdp=False)
    double = tmp_path / "double.pt"
    result = _launch([str(ROOT / "tests" / "fsdp_learner.py"), str(double), "fsdp"])
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(single, weights_only=False), torch.load(double, weights_only=False)
    assert (a["processes"], b["processes"]) == (1, 2)
    for want, got in zip(a["metrics"], b["metrics"], strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert a["metrics"][1]["grad_norm"] > 1.0  # clipped at the default max_grad_norm 1.0: clipping is compared too
    assert sorted(b["grads"]) == sorted(a["grads"]) and sorted(b["params"]) == sorted(a["params"])
    for name, value in a["grads"].items():
        # summed once over processes: a doubled or halved gradient would differ by its own size
        torch.testing.assert_close(b["grads"][name], value, rtol=1e-5, atol=1e-7)
    for name, value in a["params"].items():
        torch.testing.assert_close(b["params"][name], value, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b["resumed"][name], b["params"][name], rtol=0, atol=0)


def test_fsdp_sft_matches_one_process_and_resumes(tmp_path):
    """`genevolve sft` with fsdp: true on two processes: three micro-batches a step (two on one process, one
    on the other) and five held-out rows in batches of two (two batches against one). Losses, evaluations,
    gradient norms and final weights equal the unsharded one-process run's; the final folder loads as a
    plain HF model; a relaunch after losing the last checkpoint ends the same."""

    from tests.test_evolve_accelerate import launch_sft_pair, same_final_weights, same_sft_records
    from tests.test_evolve_sft import metric_lines

    settings = {"max_steps": 4, "grad_accum": 3, "batch_size": 2, "eval_frac": 0.25, "context_loss": 1.0,
                "context_frac": 0.5}
    command = launch_sft_pair(tmp_path, {"fsdp": True}, **settings)

    def same_records(got, want):
        same_sft_records(got, want, rel=1e-5)

    def same_weights(a_dir, b_dir):
        same_final_weights(a_dir, b_dir, rtol=1e-4, atol=1e-6)

    want = metric_lines(tmp_path / "single")
    assert json.loads((tmp_path / "single" / "data.json").read_text())["n_eval"] == 5
    assert sum(r["kind"] == "eval" for r in want) == 2 and want[0]["grad_norm"] > 1.0  # evaluated; clipped
    assert json.loads((tmp_path / "double" / "data.json").read_text())["processes"] == 2
    same_records(metric_lines(tmp_path / "double"), want)
    same_weights(tmp_path / "single", tmp_path / "double")
    saved = json.loads((tmp_path / "double" / "final" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"]

    out = tmp_path / "double"
    shutil.rmtree(out / "checkpoints" / "step-000004")
    shutil.rmtree(out / "final")
    result = _launch(command)
    assert result.returncode == 0, result.stderr[-3000:]
    same_records(metric_lines(out), want)
    same_weights(tmp_path / "single", out)


def test_fsdp_configurations_that_cannot_run_are_refused(tmp_path):
    from genevolve.evolve.model import TrainModel
    from genevolve.evolve.rl_config import load_evolve_config
    from genevolve.evolve.sharding import shard_model
    from genevolve.evolve.train_config import load_sft_config

    def sft_file(model):
        path = tmp_path / "sft.yaml"
        path.write_text(json.dumps({"model": model, "sft": {"data": ["x.jsonl"]}}))
        return path

    with pytest.raises(ConfigError, match="LoRA"):
        load_sft_config(sft_file({"fsdp": True, "lora": {"r": 4}}))
    with pytest.raises(ConfigError, match="fsdp: true only"):
        load_sft_config(sft_file({"fsdp_compute_dtype": "bfloat16"}))
    assert load_sft_config(sft_file({"fsdp": True, "fsdp_compute_dtype": "bfloat16", "dtype": "float32"})).model.fsdp
    evolve = tmp_path / "evolve.yaml"
    evolve.write_text(json.dumps({"model": {"fsdp": True}, "evolve": {"data": "x.jsonl", "alpha": 0}}))
    with pytest.raises(ConfigError, match="rollout.backend: server"):
        load_evolve_config(evolve)
    with pytest.raises(ConfigError, match="one process"):
        shard_model(torch.nn.Linear(2, 2), None)

    class Lora:
        peft_config: dict = {}

    from genevolve.evolve.sharding import shard_train_model
    from genevolve.evolve.train_config import ModelSpec

    with pytest.raises(ConfigError, match="LoRA adapter"):  # an adapter folder as model.path sets `adapter` late
        shard_train_model(TrainModel(Lora(), None, None, ModelSpec(fsdp=True)), None)


def test_shard_units_are_the_text_blocks():
    """Each decoder layer is a unit; a vision tower's blocks are not (they stay in the root unit, so a
    process without images in a batch still runs every collective)."""
    from genevolve.evolve.sharding import shard_units

    class Block(torch.nn.Linear):
        pass

    class VLM(torch.nn.Module):
        _no_split_modules = ["Block"]

        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.visual = torch.nn.ModuleList([Block(2, 2), Block(2, 2)])
            self.model.language_model = torch.nn.ModuleList([Block(2, 2) for _ in range(3)])

    vlm = VLM()
    assert shard_units(vlm) == list(vlm.model.language_model)
    with pytest.raises(ConfigError, match="no transformer blocks"):
        shard_units(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_fsdp_evolve_run_matches_one_process_and_resumes(tmp_path):
    """`genevolve evolve` with fsdp: true (server rollouts from a loopback OpenAI-compatible server, the
    only rollout backend a sharded policy allows): the steps' records equal a one-process run's, every
    process takes part in writing the checkpoints, and a relaunch after losing the last checkpoint
    resumes from the sharded state and ends with the same weights."""
    import yaml

    from genevolve.evolve.loop import EvolveRun
    from genevolve.evolve.rl_config import EvolveFile
    from genevolve.protocol import ToolCall, format_turn
    from genevolve.runfolder import latest_checkpoint
    from tests.loopback_http import LoopbackServer, send_json
    from tests.test_evolve_loop import _comparable, make_config, make_tokenizer

    def chat(h, request):
        body = request.json()
        called = any(m["role"] == "user" and "<tool_response>" in str(m["content"]) for m in body["messages"])
        content = (format_turn("pick", answer={"gen_prompt": "A red apple from the first reference image on the left.",
                                               "reference_images": [{"img_id": "IMG_001", "note": "apple"}]})
                   if called else format_turn("look", tool_call=ToolCall("image_search", {"query": "apple"})))
        send_json(h, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                   "finish_reason": "stop"}]})

    tok_dir = tmp_path / "tok"
    make_tokenizer().save_pretrained(tok_dir)

    def evolve_file(out, base, fsdp):
        cfg = make_config(tmp_path, tok_dir, out, steps=2, kl_coef=0.1, rollout={"backend": "server"})
        cfg.env["policy"] = {"kind": "openai", "model": "base", "base_url": f"{base}/v1", "api_key_env": None,
                             "structured": "none"}
        cfg.env["agent"]["structured_decoding"] = False
        cfg.model.fsdp = fsdp
        return EvolveFile.model_validate(cfg.model_dump())

    with LoopbackServer() as srv:
        srv.routes["/v1/chat/completions"] = chat
        base = srv.url("").rstrip("/")
        want = EvolveRun(evolve_file(tmp_path / "single", base, False), progress=False).run()
        path = tmp_path / "evolve.yaml"
        path.write_text(yaml.safe_dump(evolve_file(tmp_path / "double", base, True).model_dump(mode="json")))
        command = [_genevolve(), "evolve", "--config", str(path)]
        result = _launch(command)
        assert result.returncode == 0, result.stderr[-3000:]
        out = tmp_path / "double"
        first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        shutil.rmtree(latest_checkpoint(out))  # lose step 1: the relaunch resumes from step 0's checkpoint
        result = _launch(command)
        assert result.returncode == 0, result.stderr[-3000:]
        got = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert [m["step"] for m in want] == [m["step"] for m in got] == [0, 1]
    assert [m["processes"] for m in got] == [2, 2] and got[0] == first[0]
    learner_keys = ("loss", "grpo_loss", "ved_loss", "grad_norm", "clip_frac_low", "clip_frac_high",
                    "teacher_student_gap")
    assert want[1]["teacher_student_gap"] is not None  # step 1 had bundles: teacher passes were compared
    for w, g in zip(want, got, strict=True):
        rest = {k: v for k, v in _comparable(w).items() if k not in (*learner_keys, "processes")}
        assert {k: v for k, v in _comparable(g).items() if k not in (*learner_keys, "processes")} == \
            json.loads(json.dumps(rest))
        for key in learner_keys:
            assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-6), (w["step"], key)
    a = torch.load(latest_checkpoint(tmp_path / "single") / "state.pt", weights_only=False)["learner"]
    b = torch.load(latest_checkpoint(out) / "state.pt", weights_only=False)["learner"]
    assert sorted(a["trainable"]) == sorted(b["trainable"])
    for name, value in a["trainable"].items():  # measured: at most 1.4e-7 apart (Adam, lr 1e-2, two steps)
        torch.testing.assert_close(b["trainable"][name], value, rtol=1e-4, atol=1e-5)
    assert (latest_checkpoint(out) / "model" / "config.json").is_file()


def test_fsdp_vlm_sft_with_and_without_images_matches_one_process(tmp_path):
    """A tiny LLaVA under `genevolve sft` with fsdp: true, a third of the rows holding an image, so that in
    some passes one process runs the vision tower and the other does not: the vision tower stays in the
    root unit, so both still run the same collectives (sharding its blocks one by one instead aborts this
    run in gloo). Losses and evaluations equal the one-process run's; the frozen tower is unchanged."""
    import yaml
    from PIL import Image

    from genevolve.evolve.sft import run_sft
    from tests.test_evolve_sft import SUBJECTS, config, metric_lines, row
    from tests.test_policy_hf import llava

    model, processor = llava._get_wrapped_function()()
    model.save_pretrained(tmp_path / "vlm")
    processor.save_pretrained(tmp_path / "vlm")
    (tmp_path / "data" / "images").mkdir(parents=True)
    rows = []
    for i, subject in enumerate(SUBJECTS * 2):
        r = row(subject)
        if i % 3 == 0:
            Image.new("RGB", (40, 30), (40 * i % 255, 80, 0)).save(tmp_path / "data" / "images" / f"{i}.png")
            r["messages"][3]["content"] = "<tool_response>\nIMG_001: fox\n<image>\n</tool_response>"
            r["images"] = [f"images/{i}.png"]
        rows.append(json.dumps(r))
    data = tmp_path / "data" / "sft.jsonl"
    data.write_text("\n".join(rows) + "\n")
    settings = {"max_steps": 3, "grad_accum": 3, "batch_size": 1, "eval_frac": 0.25}
    run_sft(config(tmp_path / "single", data, {"path": str(tmp_path / "vlm")}, **settings), progress=False)
    cfg = config(tmp_path / "double", data, {"path": str(tmp_path / "vlm"), "fsdp": True}, **settings)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = _launch([_genevolve(), "sft", "--config", str(path)])
    assert result.returncode == 0, result.stderr[-3000:]
    want, got = metric_lines(tmp_path / "single"), metric_lines(tmp_path / "double")
    assert [(r["step"], r["kind"]) for r in got] == [(r["step"], r["kind"]) for r in want]
    for w, g in zip(want, got, strict=True):
        for key in ("loss", "grad_norm", "eval_loss", "tokens"):
            if key in w:
                assert g[key] == pytest.approx(w[key], rel=1e-4), (w["step"], key)
    import transformers

    trained = dict(transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "double" / "final")
                   .named_parameters())
    vision = [n for n, _ in model.named_parameters() if ".vision_tower." in f".{n}"]
    assert vision and all(torch.equal(trained[n], p) for n, p in model.named_parameters() if n in vision)

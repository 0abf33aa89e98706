"""LoRA sync against loopback servers that speak vLLM's and SGLang's runtime adapter API."""

from __future__ import annotations

import itertools
import json
import logging

import pytest

from genevolve.evolve.lora_sync import LoraSync, LoraSyncConfig, LoraSyncError, save_adapter
from genevolve.policy.openai_compat import OpenAIPolicy
from genevolve.registry import ConfigError
from genevolve.types import Turn
from tests.loopback_http import LoopbackServer, send_bytes, send_json, sequence, sleepy

FAST = dict(backoff_base=0.01, backoff_max=0.02, timeout=5.0)


class FakeLoraServer:
    """The adapter table of one server and its load/unload routes, as vLLM (2026) answers them."""

    def __init__(self, protocol: str = "vllm", inplace_supported: bool = True):
        self.loaded: dict[str, str] = {}
        self.protocol = protocol
        self.inplace_supported = inplace_supported
        prefix = "/v1" if protocol == "vllm" else ""
        self.routes = {f"{prefix}/load_lora_adapter": self.load, f"{prefix}/unload_lora_adapter": self.unload,
                       "/v1/models": self.models, "/v1/chat/completions": self.chat}

    def error(self, h, message, status):
        if self.protocol == "vllm":
            send_json(h, {"error": {"message": message, "type": "BadRequestError", "code": status}}, status=status)
        else:
            send_json(h, {"success": False, "error_message": message}, status=status)

    def load(self, h, request):
        body = request.json()
        inplace = body.get("load_inplace") and self.inplace_supported
        if body["lora_name"] in self.loaded and not inplace:
            return self.error(h, f"The lora adapter '{body['lora_name']}' has already been loaded.", 400)
        if body["lora_path"].startswith("/missing"):
            return self.error(h, f"No adapter found for {body['lora_path']}", 404)
        self.loaded[body["lora_name"]] = body["lora_path"]
        send_bytes(h, f"Success: LoRA adapter '{body['lora_name']}' added successfully.".encode(), "text/plain")

    def unload(self, h, request):
        name = request.json()["lora_name"]
        if name not in self.loaded:
            return self.error(h, f"The lora adapter '{name}' cannot be found.", 404)
        del self.loaded[name]
        send_bytes(h, b"Success", "text/plain")

    def models(self, h, request):
        cards = [{"id": "base", "object": "model"}]
        cards += [{"id": name, "object": "model", "root": path, "parent": "base"} for name, path in self.loaded.items()]
        send_json(h, {"object": "list", "data": cards})

    def chat(self, h, request):
        model = request.json()["model"]
        if model != "base" and model not in self.loaded:
            return self.error(h, f"The model `{model}` does not exist.", 404)
        send_json(h, {"id": "c", "object": "chat.completion", "created": 0, "model": model,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                   "finish_reason": "stop"}]})


class ApiProcesses:
    """One URL answered by several vLLM API processes, each with its own adapter table, as ``vllm serve
    --data-parallel-size N`` runs them without ``--api-server-count 1``: every request (a new connection
    here) goes to the next process in turn."""

    def __init__(self, n: int):
        self.processes = [FakeLoraServer() for _ in range(n)]
        self.turn = itertools.count()
        self.routes = {path: self.dispatch(path) for path in self.processes[0].routes}

    def dispatch(self, path):
        def route(h, request):
            self.processes[next(self.turn) % len(self.processes)].routes[path](h, request)
        return route


@pytest.fixture
def adapter(tmp_path):
    def make(name: str = "step_000001"):
        folder = tmp_path / "adapters" / name
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
        return folder
    return make


def serve(fake: FakeLoraServer | ApiProcesses) -> LoopbackServer:
    return LoopbackServer(routes=dict(fake.routes))


def adapter_calls(srv: LoopbackServer) -> list[str]:
    """The load and unload requests in order (without the /v1/models probes that follow each load)."""
    return [r.path for r in srv.requests if r.path != "/v1/models"]


def test_versioned_names_load_then_unload_previous_with_key_never_logged(adapter, monkeypatch, caplog):
    monkeypatch.setenv("LORA_KEY", "sk-secret-123")
    fake = FakeLoraServer()
    first, second = adapter("step_000001"), adapter("step_000002")
    caplog.set_level(logging.DEBUG)
    with serve(fake) as srv:
        sync = LoraSync(LoraSyncConfig(servers=[srv.url("/v1")], api_key_env="LORA_KEY", **FAST))
        assert sync.publish(first, step=1) == "policy-step-000001"
        assert fake.loaded == {"policy-step-000001": str(first)}
        assert sync.publish(second, step=2) == "policy-step-000002"
        assert fake.loaded == {"policy-step-000002": str(second)}
        assert adapter_calls(srv) == ["/v1/load_lora_adapter", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
        assert [r.json() for r in srv.requests if r.path == "/v1/unload_lora_adapter"] == [
            {"lora_name": "policy-step-000001"}]
        assert all(r.headers["Authorization"] == "Bearer sk-secret-123" for r in srv.requests)
    assert sync.served == "policy-step-000002"
    assert "sk-secret-123" not in caplog.text and "policy-step-000002" in caplog.text


def test_already_loaded_name_is_replaced_by_our_folder(adapter):
    fake = FakeLoraServer()
    fake.loaded["policy-step-000005"] = "/old/run/step_000005"  # a leftover of an earlier run
    folder = adapter("step_000005")
    with serve(fake) as srv:
        assert LoraSync({"servers": [srv.url()], **FAST}).publish(folder, step=5) == "policy-step-000005"
        assert fake.loaded == {"policy-step-000005": str(folder)}
        assert adapter_calls(srv) == ["/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/load_lora_adapter"]


def test_runtime_updating_disabled_is_a_config_error_naming_the_env_var(adapter):
    with LoopbackServer() as srv:  # no routes: FastAPI's 404 {"detail": "Not Found"} equivalent
        srv.routes["/v1/load_lora_adapter"] = lambda h, r: send_json(h, {"detail": "Not Found"}, status=404)
        with pytest.raises(ConfigError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True") as info:
            LoraSync({"servers": [srv.url()], **FAST}).publish(adapter(), step=1)
        assert srv.url() in str(info.value)
        assert srv.hits("/v1/load_lora_adapter") == 1  # not retried: resending cannot help


def test_folder_the_server_cannot_see_names_the_shared_filesystem(adapter):
    fake = FakeLoraServer()
    folder = adapter()
    with serve(fake) as srv:
        sync = LoraSync({"servers": [srv.url()], "path_map": {str(folder.parent): "/missing/adapters"}, **FAST})
        with pytest.raises(ConfigError, match="shared filesystem") as info:
            sync.publish(folder, step=1)
        assert "/missing/adapters/step_000001" in str(info.value)


def test_transient_errors_are_retried(adapter):
    fake = FakeLoraServer()
    with serve(fake) as srv:
        srv.routes["/v1/load_lora_adapter"] = sequence(lambda h, r: send_json(h, {"detail": "starting"}, status=503),
                                                       lambda h, r: send_json(h, {"detail": "gateway"}, status=502),
                                                       fake.load)
        assert LoraSync({"servers": [srv.url()], **FAST}).publish(adapter(), step=3) == "policy-step-000003"
        assert srv.hits("/v1/load_lora_adapter") == 3 and "policy-step-000003" in fake.loaded


def test_timeout_after_retries_names_server_and_cause(adapter):
    with LoopbackServer() as srv:
        srv.routes["/v1/load_lora_adapter"] = sleepy(1.0)
        sync = LoraSync({"servers": [srv.url()], "max_retries": 1, "timeout": 0.2, "backoff_base": 0.01})
        with pytest.raises(LoraSyncError, match="timeout after 0.2s") as info:
            sync.publish(adapter(), step=1)
        assert srv.url() in str(info.value) and "2 attempt(s)" in str(info.value)
        assert sync.served is None


def test_replicas_all_load_or_the_new_adapter_is_rolled_back(adapter):
    good, bad = FakeLoraServer(), FakeLoraServer()
    with serve(good) as a, serve(bad) as b:
        sync = LoraSync({"servers": [a.url(), b.url("/v1/")], **FAST})
        assert sync.publish(adapter("step_000001"), step=1) == "policy-step-000001"
        assert set(good.loaded) == set(bad.loaded) == {"policy-step-000001"}
        b.routes["/v1/load_lora_adapter"] = lambda h, r: bad.error(h, "target module conv1 is not supported", 400)
        with pytest.raises(LoraSyncError, match="conv1 is not supported") as info:
            sync.publish(adapter("step_000002"), step=2)
        assert b.url("") in str(info.value) and "1 of 2 server(s)" in str(info.value)
        # the previous adapter is still served everywhere, and the half-published one is gone
        assert set(good.loaded) == set(bad.loaded) == {"policy-step-000001"}
        assert sync.served == "policy-step-000001"


def test_permanent_load_errors_fail_at_once_naming_server_and_reason(adapter):
    """vLLM answers a load it cannot perform with 500 (older releases 400); resending cannot help."""
    fake = FakeLoraServer()
    with serve(fake) as srv:
        sync = LoraSync({"servers": [srv.url()], "max_retries": 3, **FAST})
        srv.routes["/v1/load_lora_adapter"] = lambda h, r: send_json(h, {"error": {
            "message": "LoRA rank 64 is greater than max_lora_rank 16.", "type": "InternalServerError",
            "param": None, "code": 500}}, status=500)
        with pytest.raises(ConfigError, match="--max-lora-rank at least the adapter's r") as info:
            sync.publish(adapter("step_000001"), step=1)
        assert srv.url("") in str(info.value) and "LoRA rank 64 is greater than max_lora_rank 16" in str(info.value)
        assert srv.hits("/v1/load_lora_adapter") == 1
        for status, message in [(500, "Loading lora /x failed"), (422, "Field required: lora_path")]:
            srv.routes["/v1/load_lora_adapter"] = lambda h, r, s=status, m=message: fake.error(h, m, s)
            with pytest.raises(LoraSyncError, match=f"HTTP {status}: {message}.*not retried"):
                sync.publish(adapter(f"step_{status:06d}"), step=status)
        assert srv.hits("/v1/load_lora_adapter") == 3 and sync.served is None


def test_several_api_processes_behind_one_url_fail_the_publish_not_the_rollouts(adapter):
    """`vllm serve --data-parallel-size 3` without `--api-server-count 1`: the load reaches one API process."""
    processes = ApiProcesses(3)
    chat = [Turn(role="user", content="draw a fox")]
    with serve(processes) as srv:
        # unchecked, the publish "succeeds" and the next rollout's chat request stops the run with a 404
        name = LoraSync({"servers": [srv.url()], "verify_probes": 0, **FAST}).publish(adapter("step_000001"), step=1)
        policy = OpenAIPolicy(name, base_url=srv.url("/v1"), api_key_env=None, max_retries=0, structured="none")
        with pytest.raises(ConfigError, match="does not exist.*--api-server-count 1"):
            policy.chat(chat)
        # checked, the publish itself fails with the fix, and nothing is switched
        sync = LoraSync({"servers": [srv.url()], **FAST})
        with pytest.raises(ConfigError, match=r"listed adapter 'policy-step-000002' in \d of 8 answers") as info:
            sync.publish(adapter("step_000002"), step=2)
        assert "--api-server-count 1" in str(info.value) and srv.url("") in str(info.value)
        assert sync.served is None and srv.hits("/v1/unload_lora_adapter") == 1  # the new adapter: rolled back


def test_one_api_process_per_listed_url_passes_the_check(adapter):
    """The two right setups: `--api-server-count 1` with data parallelism, or one server per GPU, all listed."""
    single, own_gpu = ApiProcesses(1), FakeLoraServer()
    with serve(single) as a, serve(own_gpu) as b:
        sync = LoraSync({"servers": [a.url(), b.url()], "verify_probes": 5, **FAST})
        name = sync.publish(adapter(), step=1)
        assert a.hits("/v1/models") == b.hits("/v1/models") == 5
        for srv in (a, b):
            policy = OpenAIPolicy(name, base_url=srv.url("/v1"), api_key_env=None, max_retries=0, structured="none")
            assert policy.chat([Turn(role="user", content="draw a fox")]) == "ok"


def test_failed_unload_is_retried_at_the_next_publish(adapter):
    fake = FakeLoraServer()
    with serve(fake) as srv:
        sync = LoraSync({"servers": [srv.url()], "max_retries": 0, **FAST})
        sync.publish(adapter("step_000001"), step=1)
        srv.routes["/v1/unload_lora_adapter"] = sequence(lambda h, r: send_json(h, {}, status=503), fake.unload)
        sync.publish(adapter("step_000002"), step=2)  # the unload of step 1 fails: a warning, not an error
        assert set(fake.loaded) == {"policy-step-000001", "policy-step-000002"}
        sync.publish(adapter("step_000003"), step=3)
        assert set(fake.loaded) == {"policy-step-000003"}


def test_sglang_routes_and_model_names(adapter):
    fake = FakeLoraServer("sglang")
    with serve(fake) as srv:
        sync = LoraSync({"servers": [srv.url("/v1")], "protocol": "sglang", "base_model": "Qwen/Qwen3-8B", **FAST})
        assert sync.publish(adapter("step_000001"), step=1) == "Qwen/Qwen3-8B:policy-step-000001"
        assert sync.publish(adapter("step_000002"), step=2) == "Qwen/Qwen3-8B:policy-step-000002"
        assert list(fake.loaded) == ["policy-step-000002"]
        assert {r.path for r in srv.requests} == {"/load_lora_adapter", "/unload_lora_adapter"}
    with pytest.raises(ValueError, match="base_model"):
        LoraSyncConfig(servers=["http://x"], protocol="sglang")


def test_inplace_reuses_one_name_and_old_servers_get_a_clear_error(adapter):
    fake = FakeLoraServer()
    with serve(fake) as srv:
        sync = LoraSync({"servers": [srv.url()], "inplace": True, **FAST})
        assert sync.publish(adapter("step_000001"), step=1) == "policy"
        assert sync.publish(adapter("step_000002"), step=2) == "policy"
        assert list(fake.loaded) == ["policy"]
        assert fake.loaded["policy"].endswith("step_000002")
        assert all(r.json()["load_inplace"] is True for r in srv.requests if r.path == "/v1/load_lora_adapter")
        assert srv.hits("/v1/unload_lora_adapter") == 0
        fake.inplace_supported = False
        with pytest.raises(ConfigError, match="load_inplace"):
            sync.publish(adapter("step_000003"), step=3)


def test_not_an_adapter_folder_or_missing_key_fail_before_any_request(tmp_path, monkeypatch):
    with LoopbackServer() as srv:
        with pytest.raises(ConfigError, match="adapter_config.json"):
            LoraSync({"servers": [srv.url()]}).publish(tmp_path, step=1)
        assert srv.requests == []
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY"):
        LoraSync({"servers": ["http://127.0.0.1:9"], "api_key_env": "NO_SUCH_KEY"})


def test_save_adapter_writes_a_peft_folder_atomically_and_prunes(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    for step in (1, 2, 3, 10):
        path = save_adapter(lora, tmp_path / "adapters", step=step, keep=2)
        assert (path / "adapter_config.json").is_file() and path.name == f"step_{step:06d}"
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["step_000003", "step_000010"]
    with pytest.raises(ConfigError, match="PEFT"):
        save_adapter(model, tmp_path / "full", step=1)
    assert not any((tmp_path / "full").iterdir())

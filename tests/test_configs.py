"""The shipped training configs parse as both stages (they drift silently otherwise)."""

from pathlib import Path

import pytest

from genevolve.evolve.rl_config import load_evolve_config
from genevolve.evolve.train_config import load_sft_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses_as_each_stage_it_holds(path):
    import yaml

    stages = yaml.safe_load(path.read_text()).keys() & {"sft", "evolve"}
    assert stages, f"{path.name} configures neither sft nor evolve"
    if "sft" in stages:
        assert load_sft_config(path).sft.data
    if "evolve" in stages:
        evolve = load_evolve_config(path)
        assert evolve.evolve.data and evolve.evolve.init_from
        assert evolve.evolve.alpha == 0 or evolve.evolve.program_judge is not None


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"world-tiny.yaml", "qwen3vl-8b-8gpu.yaml", "embedded-adapter.yaml"}


def test_the_paper_config_shows_the_vlm_its_images():
    """METHOD.md §1: a VLM policy sees the images it retrieves, in RL as in SFT."""
    evolve = load_evolve_config(Path(__file__).resolve().parent.parent / "configs" / "qwen3vl-8b-8gpu.yaml")
    assert evolve.run_config().policy.options.get("accepts_images") is True


def test_a_vlm_learner_whose_server_policy_sends_no_images_is_refused():
    from types import SimpleNamespace

    from genevolve.config import BackendSpec
    from genevolve.evolve.loop import EvolveRun
    from genevolve.registry import ConfigError

    server = SimpleNamespace(rollout=SimpleNamespace(backend="server"))
    vlm = SimpleNamespace(tm=SimpleNamespace(processor=SimpleNamespace(image_processor=object())), ev=server)
    text = SimpleNamespace(tm=SimpleNamespace(processor=None), ev=server)
    blind = SimpleNamespace(policy=BackendSpec(kind="openai", model="m"))
    seeing = SimpleNamespace(policy=BackendSpec(kind="openai", model="m", accepts_images=True))
    with pytest.raises(ConfigError, match="accepts_images: true"):
        EvolveRun._policy_sees_images(vlm, blind)
    assert EvolveRun._policy_sees_images(vlm, seeing) is True
    assert EvolveRun._policy_sees_images(text, blind) is False
    with pytest.raises(ConfigError, match="no image processor"):
        EvolveRun._policy_sees_images(text, seeing)


def _undocumented(model: type, prefix: str = "") -> list[str]:
    """Fields of ``model`` and of the sections nested in it that carry no help text."""
    import typing

    from pydantic import BaseModel

    missing = []
    for name, field in model.model_fields.items():
        if not (field.description or "").strip():
            missing.append(prefix + name)
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__module__.startswith("genevolve.evolve"):
                missing += _undocumented(arg, f"{prefix}{name}.")
    return missing


def test_every_evolve_config_key_has_help_text():
    from genevolve.evolve.rl_config import EvolveFile

    assert _undocumented(EvolveFile) == []


def test_k_alpha_and_concurrency_are_declared_once():
    """evolve.k, alpha and concurrency have their defaults in EvolveConfig only: the rollout workers and the
    group sampler take the values, so a default of their own can never silently win."""
    import dataclasses

    from genevolve.evolve.groups import GroupSampler
    from genevolve.evolve.workers import EnvSpec

    sampler_fields = {f.name: f for f in dataclasses.fields(GroupSampler)}
    for name in ("k", "alpha", "concurrency"):
        assert EnvSpec.model_fields[name].is_required(), name
        assert sampler_fields[name].default is dataclasses.MISSING, name


WORLD_TINY = CONFIGS[0].parent / "world-tiny.yaml"


@pytest.mark.parametrize("override, named", [
    ({"alpha": 0.5, "program_judge": None}, "program_judge"),
    ({"rollout": {"backend": "server"}}, "eval"),  # world-tiny evaluates every 5 steps
    ({"rollout": {"pool": {"workerz": 2}}}, "workerz"),
    ({"rollout": {"lora_sync": {"servers": ["http://gpu0:8000"], "protocol": "sglang"}}}, "base_model"),
], ids=["alpha-without-program-judge", "eval-with-server-rollouts", "pool-typo", "lora-sync-sglang"])
def test_config_mistakes_fail_when_the_file_loads(override, named):
    from genevolve.registry import ConfigError

    with pytest.raises(ConfigError, match=named):
        load_evolve_config(WORLD_TINY, {"evolve": override})

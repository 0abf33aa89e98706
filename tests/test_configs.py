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

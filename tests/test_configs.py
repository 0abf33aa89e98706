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

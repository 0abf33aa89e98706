"""Test-wide settings. ``HYPOTHESIS_PROFILE=ci`` (set by .ci/run) makes property tests derandomized
(the same examples every run, so CI fails only on real regressions) and drops hypothesis's per-example
deadline, which a loaded machine trips; run without it locally to keep exploring new examples."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="module")
def tok():
    """The toy tokenizer of tests/test_policy_hf.py (module-scoped: training it takes a moment)."""
    from tests.test_policy_hf import make_tokenizer

    return make_tokenizer()


@pytest.fixture
def tools(tmp_path):
    """The agent's tools over fakes: text search, an image library in ``tmp_path``, the knowledge skills."""
    from genevolve.tools.knowledge import KnowledgeTool
    from tests.fakes import FakeImages, FakeSearch

    return [FakeSearch(), FakeImages(tmp_path), KnowledgeTool()]

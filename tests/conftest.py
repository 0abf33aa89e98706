"""Test-wide settings. ``HYPOTHESIS_PROFILE=ci`` (set by .ci/run) makes property tests derandomized
(the same examples every run, so CI fails only on real regressions) and drops hypothesis's per-example
deadline, which a loaded machine trips; run without it locally to keep exploring new examples."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

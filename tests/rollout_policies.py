"""Policies named by ``"tests.rollout_policies:Class"`` in rollout-worker specs (importable by Ray workers)."""

from __future__ import annotations

from genevolve.policy.base import Policy
from genevolve.protocol import ToolCall, format_turn


class SeedPolicy(Policy):
    """Searches for an apple once, then answers with a count picked by the sampling seed, so rollouts of a
    group differ and a step is reproducible. ``model`` mimics a served model name (switchable)."""

    def __init__(self, model: str = "base") -> None:
        self.model = model
        self.name = f"openai:{model}"

    async def achat(self, turns, *, sampling, constraint=None):
        if not any(t.kind == "tool_response" for t in turns):
            return format_turn("look", tool_call=ToolCall("image_search", {"query": "apple"}))
        count = ["One", "Two", "Three"][sampling.seed % 3]
        return format_turn(f"served by {self.model}", answer={
            "gen_prompt": f"{count} red apples from the first reference image on the left.",
            "reference_images": [{"img_id": "IMG_001", "note": "apple"}]})


class CrashingPolicy(SeedPolicy):
    """Raises a bug (not a PolicyError) on requests containing ``CRASH``: the whole worker share fails."""

    async def achat(self, turns, *, sampling, constraint=None):
        request = next(t.content for t in turns if t.kind == "request")
        if "CRASH" in request:
            raise RuntimeError("worker bug")
        return await super().achat(turns, sampling=sampling, constraint=constraint)

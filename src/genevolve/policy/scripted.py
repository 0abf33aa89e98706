"""A policy test double that replays scripted replies and records what it was sent.

Use it wherever a test needs an agent, a rollout or a training step without a model::

    policy = ScriptedPolicy(['<tool_call>{"name": "search", ...}</tool_call>', final_answer])
    trajectory = await agent.run("a red fox", policy=policy)
    assert len(policy.calls) == 2 and "<tool_response>" in policy.calls[1][-1].content

It fails loudly on a call nobody scripted, so a loop that calls the policy once too often cannot pass
silently. It is listed as ``scripted`` for configs used by tests, and is never a default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from genevolve.policy.base import Constraint, Policy, Sampling
from genevolve.types import Turn

Reply = str | Callable[[list[Turn]], str]


class ScriptedPolicy(Policy):
    """Returns ``responses`` in order; a callable reply gets the conversation (and may raise,
    e.g. ``PolicyError`` to simulate a server failure).

    Attributes:
        calls: a deep copy of every conversation sent, in call order (the caller may mutate its list).
        samplings, constraints: the decoding settings and constraint of each call.
    """

    def __init__(
        self, responses: Sequence[Reply], name: str = "scripted", accepts_images: bool = False
    ) -> None:
        self.responses: list[Reply] = list(responses)
        self.name = name
        self.accepts_images = accepts_images
        self.calls: list[list[Turn]] = []
        self.samplings: list[Sampling] = []
        self.constraints: list[Constraint | None] = []

    @property
    def remaining(self) -> int:
        """Scripted replies not yet used."""
        return len(self.responses) - len(self.calls)

    async def achat(
        self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None
    ) -> str:
        n = len(self.calls) + 1
        if n > len(self.responses):
            last = turns[-1].content[:200] if turns else ""
            raise AssertionError(
                f"ScriptedPolicy: unexpected call #{n} ({len(self.responses)} replies scripted); "
                f"last turn: {last!r}"
            )
        self.calls.append([t.model_copy(deep=True) for t in turns])
        self.samplings.append(sampling)
        self.constraints.append(constraint)
        reply = self.responses[n - 1]
        return reply(turns) if callable(reply) else reply

    def assert_exhausted(self) -> None:
        """Fail when some scripted replies were never requested (the loop stopped early)."""
        if self.remaining:
            raise AssertionError(f"ScriptedPolicy: {self.remaining} of {len(self.responses)} replies unused")

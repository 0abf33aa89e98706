"""The policy interface: chat turns in, one assistant message out.

A minimal implementation::

    class Echo(Policy):
        name = "echo"
        async def achat(self, turns, *, sampling, constraint=None):
            return "<think>ok</think>\\n<answer>{\\"gen_prompt\\": \\"a cat\\", \\"reference_images\\": []}</answer>"

Implementations must be safe to call concurrently from one event loop (the agent runs many rollouts
at once). Errors are split by fault: ``PolicyError`` for backend failures (server down, timeout after
retries) that end one rollout with ``StopReason.POLICY_ERROR``; bugs and configuration errors raise.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from genevolve.types import Turn


class Sampling(BaseModel):
    """Decoding settings. Defaults are the paper's inference settings (T=0.6, top_p=0.9)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = 0.6
    top_p: float = 0.9
    max_tokens: int = 1024
    seed: int | None = None


class Constraint(BaseModel):
    """A structured-output constraint for one policy call.

    kind:
      - ``grammar``: a Lark grammar (llguidance / vLLM ``structured_outputs.grammar`` dialect);
      - ``regex``: a regular expression the whole output must match;
      - ``json_schema``: the output is one JSON value matching ``value`` (a dict).
    Backends that cannot enforce a kind raise ``UnsupportedConstraint`` at call time.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["grammar", "regex", "json_schema"]
    value: Any


class Reply(BaseModel):
    """One assistant message with what the decoder knows about it. ``forced``: ``[start, end)`` character
    spans of ``text`` that the constraint forced (no choice was left there); empty when unknown.
    ``forced_end``: the end-of-turn token the decoder stopped on was the only token the constraint allowed.
    ``token_ids``: the ids the decoder sampled for ``text`` (end token excluded), when it knows them and
    they decode to ``text``; a learner scores these rather than a re-tokenisation, which can differ.
    ``logprobs``: the sampler's log-prob of each of ``token_ids``, then of ``stop_token_id`` when the reply
    ended on an end token: log-softmax of the model's logits divided by the sampling temperature (1 for
    greedy), before any constraint mask and top-p, i.e. the distribution a learner scores at that
    temperature. Empty when unknown; a learner checks its own log-probs against these.
    ``truncated``: the reply ended because the token budget ran out (no end token was sampled)."""

    model_config = ConfigDict(extra="forbid")

    text: str
    forced: list[tuple[int, int]] = []
    forced_end: bool = False
    token_ids: list[int] = []
    logprobs: list[float] = []
    stop_token_id: int | None = None
    truncated: bool = False


class PolicyError(RuntimeError):
    """The policy backend failed to produce a message (after its retries)."""


class UnsupportedConstraint(ValueError):
    """The backend cannot enforce this kind of constraint."""


class Policy(ABC):
    name: str = "policy"
    #: True when the policy reads images in its context (a VLM); text-only policies see image lines.
    accepts_images: bool = False
    #: the system prompt style the policy was trained with ("full" or "compact"); None: the agent's default.
    #: An explicit ``agent.prompt`` in the config wins.
    prompt_style: str | None = None

    @abstractmethod
    async def achat(self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None) -> str:
        """Return the assistant's next message for the conversation ``turns``."""

    async def areply(self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None) -> Reply:
        """The next message with decoding details. Backends that see the constraint's mask (the local
        transformers policy) report the forced spans; the default knows only the text."""
        return Reply(text=await self.achat(turns, sampling=sampling, constraint=constraint))

    def chat(self, turns: list[Turn], *, sampling: Sampling | None = None, constraint: Constraint | None = None) -> str:
        """Synchronous wrapper around :meth:`achat`."""
        return asyncio.run(self.achat(turns, sampling=sampling or Sampling(), constraint=constraint))

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or models."""

"""Policy backends, named by ``kind`` (see :mod:`genevolve.registry`).

| kind | class | for |
|---|---|---|
| ``openai`` | :class:`~genevolve.policy.openai_compat.OpenAIPolicy` | vLLM, SGLang, OpenAI, gateways |
| ``hf`` | :class:`~genevolve.policy.hf.HFPolicy` | local transformers text LMs and VLMs (+ LoRA) |
| ``scripted`` | :class:`~genevolve.policy.scripted.ScriptedPolicy` | tests only, never a default |
| ``direct`` | :class:`~genevolve.policy.direct.DirectPolicy` | baseline: the raw request as the prompt, no references |
| ``world-expert`` | :class:`~genevolve.world.expert.WorldExpert` | the offline world's scripted expert (noise option) |

Backend modules are imported only when built, so importing this package pulls no SDK or torch.
"""

from __future__ import annotations

from typing import Any

from genevolve.policy.base import Constraint, Policy, PolicyError, Reply, Sampling, UnsupportedConstraint
from genevolve.registry import build

POLICIES: dict[str, str] = {
    "openai": "genevolve.policy.openai_compat:OpenAIPolicy",
    "hf": "genevolve.policy.hf:HFPolicy",
    "embedded": "genevolve.policy.embedded:EmbeddedPolicy",
    "scripted": "genevolve.policy.scripted:ScriptedPolicy",
    "direct": "genevolve.policy.direct:DirectPolicy",
    "world-expert": "genevolve.world.expert:WorldExpert",
}


def build_policy(kind: str, **kwargs: Any) -> Policy:
    """Build the policy named ``kind`` (a key of ``POLICIES`` or ``"package.module:Class"``)."""
    return build(POLICIES, kind, "policy", **kwargs)


__all__ = [
    "POLICIES",
    "Constraint",
    "Policy",
    "PolicyError",
    "Reply",
    "Sampling",
    "UnsupportedConstraint",
    "build_policy",
]

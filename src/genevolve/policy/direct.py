"""``DirectPolicy``: the "no agent" baseline. Its one turn answers with the raw request as the prompt.

The program is ``gen_prompt = request`` with no reference images, which is what sending the request
straight to the generator means. Run it with ``agent: {min_references: 0}`` (an answer without a
reference is otherwise a protocol failure). Example config (the offline world writes one)::

    policy: {kind: direct}
    agent: {min_references: 0}
"""

from __future__ import annotations

from genevolve.policy.base import Constraint, Policy, Sampling
from genevolve.protocol import format_turn
from genevolve.types import Turn


class DirectPolicy(Policy):
    name = "direct"

    async def achat(self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None) -> str:
        request = next((t.content for t in turns if t.kind == "request"), None)
        if request is None:
            request = next((t.content for t in turns if t.role == "user"), "")
        return format_turn("Send the request to the generator as it is.",
                           answer={"gen_prompt": request, "reference_images": []})

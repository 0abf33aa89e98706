"""The embedded default stack: what ``genevolve run`` uses when nothing else is configured.

Everything comes from registry packages and runs offline on a CPU: SmolLM2-135M-Instruct with the
bundled LoRA adapter (trained on the offline world's expert trajectories; it brings the compact system
prompt) and protocol-grammar decoding, BM25 over Wikipedia summaries, the OpenMoji image library, the collage
renderer and the heuristic (OCR + embedding) judge.

Budgets are smaller than the paper's 11 policy / 10 tool calls: each policy call costs seconds on a
CPU and a 135M model gains little from more rounds. Pass a config to restore them.
"""

from __future__ import annotations

from typing import Any

EMBEDDED: dict[str, Any] = {
    "policy": {"kind": "embedded"},
    "search": {"kind": "local"},
    "image_search": {"kind": "local"},
    "renderer": {"kind": "collage"},
    "judge": {"kind": "heuristic"},
    "agent": {
        "max_policy_calls": 5,
        "max_tool_calls": 4,
        "sampling": {"temperature": 0.6, "top_p": 0.9, "max_tokens": 1536},
    },
}


def embedded_defaults() -> dict[str, Any]:
    """A fresh copy of the embedded stack's config (a plain dict, merged under user settings)."""
    import copy

    return copy.deepcopy(EMBEDDED)

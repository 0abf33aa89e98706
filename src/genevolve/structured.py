"""Structured decoding for the protocol: a grammar that only admits well-formed turns.

``protocol_grammar`` writes a Lark grammar (the llguidance dialect, which vLLM's ``guidance``
structured-output backend and SGLang's llguidance backend also accept) for one assistant turn:
``<think>`` with bounded free text, then either one tool call whose JSON matches a registered tool's
argument schema, or an answer whose ``img_id``s can only be ids this rollout has retrieved.

Rules that depend on the rollout (``constraint_factory``):
- in the final step only an answer is allowed;
- an answer is allowed only once enough usable images exist to satisfy ``min_references``;
- while no usable image exists and at most one tool call is left before the final step, only
  ``image_search`` is allowed, and its query must be a word or phrase of the request, so that a
  rollout can end with a usable reference even when the model's own queries found nothing;
- a tool whose previous call was an exact repeat is not offered on the next turn;
- with ``grounded_queries``, an ``image_search`` query may only use words that the request or a tool
  response has shown (``grounded_query_pattern``).
JSON is compact (no free whitespace) and strings are length-bounded so a weak model cannot ramble.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from genevolve.policy.base import Constraint
from genevolve.tools.base import Tool

THINK_MAX_CHARS = 400
PROMPT_MAX_CHARS = 500
NOTE_MAX_CHARS = 80
ARG_STRING_MAX_CHARS = 120
#: no angle brackets (a string could otherwise close the protocol tag around it) and no control characters
SAFE_STRING = "^[^<>\\x00-\\x1f]*$"
#: tool arguments (queries): also no underscores or brackets (code-like junk that matches nothing), and at
#: least one letter in any script
ARG_STRING = "^[^<>_{}\\[\\]\\x00-\\x1f]*\\p{L}[^<>_{}\\[\\]\\x00-\\x1f]*$"


def _bounded(schema: Any) -> Any:
    """Copy a JSON schema, bounding string lengths and array sizes and dropping keywords that
    structured-output engines handle inconsistently (titles, defaults)."""
    if isinstance(schema, dict):
        out = {k: _bounded(v) for k, v in schema.items() if k not in ("title", "default", "description")}
        if out.get("type") == "string" and "enum" not in out and "const" not in out:
            out["maxLength"] = min(int(out.get("maxLength", ARG_STRING_MAX_CHARS)), ARG_STRING_MAX_CHARS)
            out.setdefault("pattern", ARG_STRING)  # a pattern of the schema's own (grounded queries) stays
        if out.get("type") == "array":
            out["maxItems"] = min(int(out.get("maxItems", 3)), 3)
        if out.get("type") == "object":
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_bounded(s) for s in schema]
    return schema


def tool_call_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    options = []
    for tool in tools:
        args = _bounded(tool.schema())
        args["required"] = sorted(args.get("properties", {}))  # always spell arguments out
        options.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                        "properties": {"name": {"const": tool.name}, "arguments": args}})
    return options[0] if len(options) == 1 else {"anyOf": options}


def answer_schema(image_ids: Sequence[str], *, min_references: int, max_references: int,
                  prompt_max_chars: int = PROMPT_MAX_CHARS) -> dict[str, Any]:
    """The answer's JSON schema: ``gen_prompt`` up to ``prompt_max_chars``, references chosen from ``image_ids``
    (each note no longer than the prompt, nor than ``NOTE_MAX_CHARS``)."""
    ref: dict[str, Any] = {"type": "object", "additionalProperties": False, "required": ["img_id", "note"],
                           "properties": {"img_id": {"enum": list(image_ids)},
                                          "note": {"type": "string", "maxLength": min(NOTE_MAX_CHARS, prompt_max_chars),
                                                   "pattern": SAFE_STRING}}}
    refs: dict[str, Any] = {"type": "array", "items": ref, "minItems": min_references,
                            "maxItems": max(min(max_references, len(image_ids)), min_references)}
    if not image_ids:
        refs = {"type": "array", "maxItems": 0}
    return {"type": "object", "additionalProperties": False, "required": ["gen_prompt", "reference_images"],
            "properties": {"gen_prompt": {"type": "string", "minLength": 1, "maxLength": prompt_max_chars,
                                          "pattern": SAFE_STRING},
                           "reference_images": refs}}


_COMPACT = {"x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}


def _json_rule(schema: dict[str, Any]) -> str:
    return "%json " + json.dumps({**schema, **_COMPACT}, ensure_ascii=False)


def protocol_grammar(
    tools: Sequence[Tool] | None,
    image_ids: Sequence[str] | None,
    *,
    min_references: int = 1,
    max_references: int = 2,
    think_max_chars: int = THINK_MAX_CHARS,
    prompt_max_chars: int = PROMPT_MAX_CHARS,
) -> str:
    """Lark grammar for one assistant turn. ``tools`` None/empty: no tool call; ``image_ids`` None: no answer."""
    if not tools and image_ids is None:
        raise ValueError("a turn needs at least one of tools and an answer")
    actions, rules = [], []
    if tools:
        actions.append("tool_call")
        rules.append(f'tool_call: "<tool_call>\\n" call_json "\\n</tool_call>"\ncall_json: {_json_rule(tool_call_schema(tools))}')
    if image_ids is not None:
        actions.append("answer")
        schema = answer_schema(image_ids, min_references=min_references, max_references=max_references,
                               prompt_max_chars=prompt_max_chars)
        rules.append(f'answer: "<answer>\\n" answer_json "\\n</answer>"\nanswer_json: {_json_rule(schema)}')
    return "\n".join([
        f'start: "<think>\\n" THINK "\\n</think>\\n" ({" | ".join(actions)})',
        f"THINK: /[^<>\\n]{{1,{think_max_chars}}}/",
        *rules,
    ])


_STOPWORDS = frozenset("""a an the of in on at to for with and or but by from as is are be this that these those
it its into over under above below near next beside than then there their them they some any each every
very much many more most few all no not make draw show create picture image photo poster style please
shows showing""".split())


def request_phrases(request: str, limit: int = 24) -> list[str]:
    """Content words and adjacent word pairs of the request, as fallback image-search queries."""
    import re

    words = [w for w in re.findall(r"[^\W\d_][\w'-]*", request.lower()) if w not in _STOPWORDS and len(w) > 2]
    phrases = [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)] + words
    return list(dict.fromkeys(p[:ARG_STRING_MAX_CHARS] for p in phrases))[:limit]


#: a word the grounded-query pattern may use: letters/digits, inner apostrophes and hyphens (no regex
#: metacharacters, so words go into the pattern as they are)
_WORD = r"[^\W_][\w'-]*"
GROUNDED_MAX_WORDS = 6
GROUNDED_VOCAB = 600


def grounded_words(texts: Sequence[str], limit: int = GROUNDED_VOCAB) -> list[str]:
    """Distinct words of ``texts`` in order of first appearance, each also in lower case; the first
    ``limit`` (the request comes first, so its words are always kept)."""
    import re

    words: dict[str, None] = {}
    for text in texts:
        for w in re.findall(_WORD, text):
            if len(w) <= 40 and "_" not in w:  # no ids (IMG_001): ARG_STRING bans underscores too
                words.setdefault(w, None)
                words.setdefault(w.lower(), None)
    return list(words)[:limit]


def grounded_query_pattern(words: Sequence[str], max_words: int = GROUNDED_MAX_WORDS) -> str:
    """A regex for a query of 1..``max_words`` space-separated words, each one of ``words``."""
    alt = "(?:" + "|".join(sorted(set(words), key=lambda w: (-len(w), w))) + ")"
    return f"^{alt}(?: {alt}){{0,{max_words - 1}}}$"


def _grounded_image_tool(tool: Tool, words: list[str]) -> Tool:
    """``tool`` whose ``query`` must be made of ``words``."""
    schema = tool.schema()
    query = {"type": "string", "maxLength": ARG_STRING_MAX_CHARS, "pattern": grounded_query_pattern(words)}
    schema["properties"] = {**schema.get("properties", {}), "query": query}
    return _with_schema(tool.name, schema)


def _with_schema(name: str, schema: dict[str, Any]) -> Tool:
    class Restricted:
        @staticmethod
        def schema() -> dict[str, Any]:
            return schema

    Restricted.name = name  # type: ignore[attr-defined]
    return Restricted()  # type: ignore[return-value]


def _fallback_image_tool(tool: Tool, phrases: list[str]) -> Tool:
    """``tool`` whose schema only admits ``query`` values from ``phrases``."""
    schema = tool.schema()
    schema["properties"] = {**schema.get("properties", {}), "query": {"enum": phrases}}
    return _with_schema(tool.name, schema)


def constraint_factory(tools: Sequence[Tool], *, min_references: int = 1, max_references: int = 2,
                       max_tool_calls: int = 10, think_max_chars: int = THINK_MAX_CHARS,
                       prompt_max_chars: int = PROMPT_MAX_CHARS, grounded_queries: bool = False):
    """A ``ConstraintFactory`` for ``Agent``: the grammar for the rollout's current state."""
    by_name = {t.name: t for t in tools}

    def factory(state) -> Constraint:
        usable = [i for i, im in state.images.items() if im.path is not None]
        can_answer = len(usable) >= min_references
        allowed: list[Tool] = [] if state.final else [t for t in tools if t.name != state.last_repeated_tool]
        if grounded_queries and "image_search" in by_name:
            words = grounded_words([state.request, *state.observations])
            allowed = [_grounded_image_tool(t, words) if t.name == "image_search" and words else t for t in allowed]
        left = max_tool_calls - state.n_tool_calls
        if not state.final and not usable and left <= 1 and "image_search" in by_name:
            phrases = request_phrases(state.request)
            image_tool = by_name["image_search"]
            allowed = [_fallback_image_tool(image_tool, phrases) if phrases else image_tool]
        if not allowed and not can_answer:
            can_answer = True  # nothing else is possible; the answer will be recorded as invalid
        grammar = protocol_grammar(allowed, usable if can_answer else None, min_references=min(min_references, len(usable)),
                                   max_references=max_references, think_max_chars=think_max_chars,
                                   prompt_max_chars=prompt_max_chars)
        return Constraint(kind="grammar", value=grammar)

    return factory

"""The GenEvolve turn protocol: parse and format assistant turns and tool responses.

An assistant turn is ``<think>…</think>`` followed by exactly one action:
``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` or ``<answer>{…}</answer>``.
Tool results come back as a user turn ``<tool_response>…</tool_response>``.

``parse_turn`` never raises: anything that is not a well-formed turn becomes a ``FormatError`` with
a code, so the agent can answer with a format-error observation and rewards can count them.
``format_turn`` writes turns that ``parse_turn`` reads back exactly (property-tested).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_TAGS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


class FormatErrorCode(StrEnum):
    EMPTY = "empty"
    MISSING_THINK = "missing_think"
    UNCLOSED_TAG = "unclosed_tag"
    NO_ACTION = "no_action"
    MULTIPLE_TOOL_CALLS = "multiple_tool_calls"
    MULTIPLE_ANSWERS = "multiple_answers"
    TOOL_CALL_AND_ANSWER = "tool_call_and_answer"
    STRAY_TEXT = "stray_text"  # non-space text outside the think block and the action
    BAD_JSON = "bad_json"
    BAD_TOOL_CALL = "bad_tool_call"  # JSON is not {"name": str, "arguments": {...}}
    UNKNOWN_TOOL = "unknown_tool"
    BAD_ANSWER = "bad_answer"  # JSON is not {"gen_prompt": str, "reference_images": [{"img_id": str, ...}]}


@dataclass(frozen=True)
class FormatError:
    code: FormatErrorCode
    message: str


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedTurn:
    """Exactly one of ``tool_call``, ``answer`` and ``error`` is set."""

    think: str | None = None
    tool_call: ToolCall | None = None
    answer: dict[str, Any] | None = None
    error: FormatError | None = None

    @property
    def kind(self) -> str:
        return "tool_call" if self.tool_call else "answer" if self.answer is not None else "error"


def _error(code: FormatErrorCode, message: str, think: str | None = None) -> ParsedTurn:
    return ParsedTurn(think=think, error=FormatError(code, message))


def parse_turn(text: str, tool_names: Collection[str] | None = None) -> ParsedTurn:
    """Parse one assistant message. ``tool_names``, when given, are the callable tools."""
    body = text.strip() if isinstance(text, str) else ""
    if not body:
        return _error(FormatErrorCode.EMPTY, "The message was empty.")
    if not body.startswith(THINK_OPEN):
        return _error(FormatErrorCode.MISSING_THINK, f"Start every message with {THINK_OPEN}…{THINK_CLOSE}.")
    end = body.find(THINK_CLOSE)
    if end < 0:
        return _error(FormatErrorCode.UNCLOSED_TAG, f"{THINK_OPEN} was never closed with {THINK_CLOSE}.")
    think = body[len(THINK_OPEN):end].strip()
    rest = body[end + len(THINK_CLOSE):]

    n_calls, n_answers = rest.count(CALL_OPEN), rest.count(ANSWER_OPEN)
    if n_calls and n_answers:
        return _error(FormatErrorCode.TOOL_CALL_AND_ANSWER, "Write either one tool call or one answer, not both.", think)
    if n_calls > 1:
        return _error(FormatErrorCode.MULTIPLE_TOOL_CALLS, "Write exactly one tool call per message.", think)
    if n_answers > 1:
        return _error(FormatErrorCode.MULTIPLE_ANSWERS, "Write exactly one answer.", think)
    if not n_calls and not n_answers:
        return _error(FormatErrorCode.NO_ACTION, f"After {THINK_CLOSE}, write one {CALL_OPEN} or one {ANSWER_OPEN}.", think)

    open_tag, close_tag = (CALL_OPEN, CALL_CLOSE) if n_calls else (ANSWER_OPEN, ANSWER_CLOSE)
    start = rest.find(open_tag)
    stop = rest.find(close_tag, start)
    if stop < 0:
        return _error(FormatErrorCode.UNCLOSED_TAG, f"{open_tag} was never closed with {close_tag}.", think)
    outside = rest[:start] + rest[stop + len(close_tag):]
    if outside.strip():
        return _error(FormatErrorCode.STRAY_TEXT, f"Write nothing outside {THINK_OPEN}…{THINK_CLOSE} and {open_tag}…{close_tag}.", think)
    try:
        payload = json.loads(rest[start + len(open_tag):stop])
    except (ValueError, RecursionError) as exc:
        return _error(FormatErrorCode.BAD_JSON, f"The content of {open_tag} is not valid JSON ({exc}).", think)
    if n_calls:
        return _tool_call(payload, think, tool_names)
    return _answer(payload, think)


def _tool_call(payload: Any, think: str, tool_names: Collection[str] | None) -> ParsedTurn:
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return _error(FormatErrorCode.BAD_TOOL_CALL, 'A tool call is {"name": "<tool>", "arguments": {...}}.', think)
    arguments = payload.get("arguments", {})
    if not isinstance(arguments, dict) or set(payload) - {"name", "arguments"}:
        return _error(FormatErrorCode.BAD_TOOL_CALL, 'A tool call is {"name": "<tool>", "arguments": {...}}.', think)
    name = payload["name"]
    if tool_names is not None and name not in tool_names:
        valid = ", ".join(sorted(tool_names))
        return _error(FormatErrorCode.UNKNOWN_TOOL, f"There is no tool named {name!r}; the tools are: {valid}.", think)
    return ParsedTurn(think=think, tool_call=ToolCall(name, arguments))


def _answer(payload: Any, think: str) -> ParsedTurn:
    hint = 'An answer is {"gen_prompt": "...", "reference_images": [{"img_id": "IMG_###", "note": "..."}]}.'
    if not isinstance(payload, dict) or not isinstance(payload.get("gen_prompt"), str):
        return _error(FormatErrorCode.BAD_ANSWER, hint, think)
    refs = payload.get("reference_images", [])
    if not isinstance(refs, list) or not all(isinstance(r, dict) and isinstance(r.get("img_id"), str) for r in refs):
        return _error(FormatErrorCode.BAD_ANSWER, hint, think)
    if not all(isinstance(r.get("note", ""), str) for r in refs):
        return _error(FormatErrorCode.BAD_ANSWER, hint, think)
    return ParsedTurn(think=think, answer=payload)


def dump_json(value: Any) -> str:
    """JSON for inside a tag: ``<`` and ``>`` are escaped so a string can never close the tag."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


def format_turn(think: str, *, tool_call: ToolCall | None = None, answer: dict[str, Any] | None = None) -> str:
    """Write an assistant turn. Exactly one of ``tool_call`` and ``answer``."""
    if (tool_call is None) == (answer is None):
        raise ValueError("format_turn needs exactly one of tool_call and answer")
    if any(tag in think for tag in _TAGS):
        raise ValueError("think text must not contain protocol tags")
    if tool_call is not None:
        action = f"{CALL_OPEN}\n{dump_json({'name': tool_call.name, 'arguments': tool_call.arguments})}\n{CALL_CLOSE}"
    else:
        action = f"{ANSWER_OPEN}\n{dump_json(answer)}\n{ANSWER_CLOSE}"
    return f"{THINK_OPEN}\n{think.strip()}\n{THINK_CLOSE}\n{action}"


def format_tool_response(text: str) -> str:
    return f"{RESPONSE_OPEN}\n{text.strip()}\n{RESPONSE_CLOSE}"


_RESPONSE_RE = re.compile(re.escape(RESPONSE_OPEN) + r"\n?(.*?)\n?" + re.escape(RESPONSE_CLOSE), re.DOTALL)


def parse_tool_response(text: str) -> str | None:
    """The body of a ``<tool_response>`` block, or None when ``text`` is not one."""
    m = _RESPONSE_RE.fullmatch(text.strip())
    return m.group(1) if m else None

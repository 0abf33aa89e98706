"""Convert between trajectories and GenEvolve-Data SFT rows.

A public SFT row is ``{"messages": [{"role": ..., "content": ...}, ...], "images": [path, ...]}``:
each ``<image>`` in a message's content stands for the next entry of ``images`` (relative paths,
resolved against the dataset root). Content may also come as a list of OpenAI/HF-style parts
(``{"type": "text", "text": ...}``, ``{"type": "image", ...}``), which is read the same way.

Loading rebuilds what can be rebuilt from the text: the request (first user turn), turn kinds, the
``IMG_###`` ids listed in tool responses (paired with that turn's images when their counts agree),
tool calls, and the program from the final answer, validated like a live rollout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from genevolve.protocol import RESPONSE_OPEN, parse_tool_response, parse_turn
from genevolve.types import IMAGE_PLACEHOLDER, RetrievedImage, StopReason, ToolCallRecord, Trajectory, Turn
from genevolve.validation import validate_answer

_ID_LINE = re.compile(r"^\s*(IMG_\d{3,})\s*[:|-]\s*(?:title:\s*)?(.*?)\s*(?:<image>)?\s*$", re.MULTILINE)


class SFTRowError(ValueError):
    """The row does not have the GenEvolve-Data SFT shape; the message says what is wrong."""


def content_text(content: Any, where: str) -> tuple[str, list[str]]:
    """Message content as text with ``<image>`` placeholders, plus inline image refs (for part lists)."""
    if isinstance(content, str):
        return content, []
    if isinstance(content, list):
        text, inline = [], []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                text.append(str(part.get("text", "")))
            elif kind in ("image", "image_url"):
                text.append(IMAGE_PLACEHOLDER)
                ref = part.get("image") or part.get("url") or part.get("path") or part.get("image_url") or ""
                inline.append(ref.get("url", "") if isinstance(ref, dict) else str(ref))
            else:
                raise SFTRowError(f"{where}: content part {part!r} is neither text nor image")
        return "".join(text), inline
    raise SFTRowError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")


def trajectory_from_sft_row(row: dict[str, Any], root: str | Path | None = None, *, max_references: int = 2) -> Trajectory:
    """Read one SFT row. ``root`` resolves relative image paths (the dataset folder)."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SFTRowError("row has no 'messages' list")
    images = [str(p) for p in row.get("images", []) or []]
    pending = list(images)

    turns: list[Turn] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise SFTRowError(f"messages[{i}] needs a role of system, user or assistant")
        text, inline = content_text(msg.get("content", ""), f"messages[{i}]")
        n = text.count(IMAGE_PLACEHOLDER)
        if inline and all(inline):
            turn_images = inline
        else:
            if n > len(pending):
                raise SFTRowError(f"messages[{i}] has {n} {IMAGE_PLACEHOLDER} placeholders but only "
                                  f"{len(pending)} images remain in 'images'")
            turn_images, pending = pending[:n], pending[n:]
        turn_images = [_resolve(p, root) for p in turn_images]
        turns.append(Turn(role=msg["role"], content=text, images=turn_images, kind=_kind(msg["role"], text, turns)))
    if pending:
        raise SFTRowError(f"'images' has {len(pending)} more entries than {IMAGE_PLACEHOLDER} placeholders")

    request = next((t.content for t in turns if t.kind == "request"), None)
    if request is None:
        raise SFTRowError("row has no user message to use as the request")
    return _rebuild(Trajectory(request=request, turns=turns, meta={"source": "sft_row"}), max_references)


def _resolve(path: str, root: str | Path | None) -> str:
    if root is None or "://" in path or path.startswith("data:") or os.path.isabs(path):
        return path
    return str(Path(root) / path)


def _kind(role: str, text: str, previous: list[Turn]) -> str:
    if role == "user" and not any(t.kind == "request" for t in previous):
        return "request"
    if role == "user" and text.lstrip().startswith(RESPONSE_OPEN):
        return "tool_response"
    if role == "user" and "final step" in text.lower():
        return "final_step"
    return ""


def _rebuild(traj: Trajectory, max_references: int) -> Trajectory:
    retrieved: dict[str, RetrievedImage] = {}
    answer = None
    round_ = 0
    for turn in traj.turns:
        if turn.role == "assistant":
            round_ += 1
            parsed = parse_turn(turn.content)
            if parsed.tool_call:
                traj.tool_calls.append(ToolCallRecord(round=round_, name=parsed.tool_call.name,
                                                      arguments=parsed.tool_call.arguments))
            elif parsed.answer is not None:
                answer = parsed.answer
            else:
                traj.n_format_errors += 1
        elif turn.kind == "tool_response":
            body = parse_tool_response(turn.content) or ""
            ids = _ID_LINE.findall(body)
            paths = turn.images if len(turn.images) == len(ids) else [None] * len(ids)
            for (img_id, title), path in zip(ids, paths, strict=True):
                retrieved.setdefault(img_id, RetrievedImage(img_id=img_id, title=title, path=path))
    traj.n_policy_calls, traj.n_tool_calls = round_, len(traj.tool_calls)
    traj.retrieved = list(retrieved.values())
    if answer is None:
        traj.stop_reason, traj.failure = StopReason.NO_ANSWER, "the row ends without an answer"
        return traj
    result = validate_answer(answer, retrieved, max_references=max_references)
    traj.violations = result.names
    traj.program = result.program
    traj.stop_reason = StopReason.ANSWER if result.program else StopReason.INVALID_ANSWER
    traj.failure = None if result.program else result.describe()
    return traj


def trajectory_to_sft_row(traj: Trajectory, image_root: str | Path | None = None) -> dict[str, Any]:
    """Write a trajectory as an SFT row; image paths are made relative to ``image_root`` if given."""
    images: list[str] = []
    messages = []
    for turn in traj.turns:
        messages.append({"role": turn.role, "content": turn.content})
        for p in turn.images:
            if image_root is not None and "://" not in p and os.path.isabs(p):
                p = os.path.relpath(p, image_root)
            images.append(p)
    return {"messages": messages, "images": images}

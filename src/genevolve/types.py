"""Plain records that flow through genevolve, each with a lossless JSON round-trip.

request -> Agent -> Trajectory(turns, program) -> Renderer -> Judge -> Score -> ...

Images are files referenced by path (or URL); they are never inlined into these records.
A turn's ``content`` marks where each of its images sits with the placeholder ``<image>``
(the convention of the public GenEvolve-Data SFT rows), so ``content.count("<image>") ==
len(images)`` for every turn.
"""

from __future__ import annotations

import json
import time
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IMAGE_PLACEHOLDER = "<image>"
SCHEMA_VERSION = "genevolve.trajectory/1"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self, **kw: Any) -> str:
        return self.model_dump_json(**kw)

    @classmethod
    def from_json(cls, text: str | bytes):
        return cls.model_validate_json(text)


class RetrievedImage(_Record):
    """One candidate reference image returned by ``image_search``.

    ``img_id`` is assigned by the agent (``IMG_###``, unique within a rollout); backends leave it
    empty. ``path`` is the local file (downloaded or from a local library); it is ``None`` when the
    download failed, and such an image cannot be used as a reference.
    """

    img_id: str = ""
    title: str = ""
    url: str = ""  # where the image itself came from (empty for local libraries)
    page_url: str = ""  # the page that showed it
    path: str | None = None
    query: str = ""
    error: str | None = None  # why ``path`` is missing, e.g. "download_failed: not an image"


class Reference(_Record):
    """A reference image chosen by the program, resolved against the rollout's retrieved images."""

    img_id: str
    note: str = ""
    path: str | None = None
    url: str = ""
    title: str = ""


class Program(_Record):
    """The prompt-reference program z = (g, R) that a reference-conditioned generator renders."""

    gen_prompt: str
    references: list[Reference] = Field(default_factory=list)

    def answer_json(self) -> dict[str, Any]:
        """The program in the protocol's answer shape (what the policy writes)."""
        return {
            "gen_prompt": self.gen_prompt,
            "reference_images": [{"img_id": r.img_id, "note": r.note} for r in self.references],
        }


class Observation(_Record):
    """What a tool call returns to the policy.

    ``error`` names a tool failure (timeout, http_500, bad_arguments, ...): the rollout goes on and the
    policy sees ``text``, which then explains the failure.
    """

    text: str
    images: list[RetrievedImage] = Field(default_factory=list)
    error: str | None = None


Role = Literal["system", "user", "assistant"]


class Turn(_Record):
    """One chat message. Tool responses are user turns wrapped in ``<tool_response>``."""

    role: Role
    content: str
    images: list[str] = Field(default_factory=list)  # paths or URLs, in placeholder order
    kind: str = ""  # "", "request", "tool_response", "format_error", "final_step", "answer_rejected"
    #: assistant turns: ``[start, end)`` character spans of ``content`` that a decoding constraint forced (the
    #: grammar left one way to continue), sorted and disjoint; training can leave them out of the loss.
    forced: list[tuple[int, int]] = Field(default_factory=list)
    #: assistant turns: the end-of-turn token that closed the turn was forced too (no other token was allowed)
    forced_end: bool = False
    #: assistant turns: the token ids the policy sampled for ``content`` (its own tokenizer; empty when unknown)
    token_ids: list[int] = Field(default_factory=list)
    #: assistant turns: the sampler's log-prob of each of ``token_ids``, then of ``stop_token_id`` when the turn
    #: ended on an end token (at the sampling temperature, before constraint masks and top-p; empty when unknown)
    logprobs: list[float] = Field(default_factory=list)
    #: assistant turns: the end token the sampler stopped on (None: it stopped for another reason, or unknown)
    stop_token_id: int | None = None
    #: assistant turns: the token budget ran out, so the policy sampled no end-of-turn token
    truncated: bool = False

    @model_validator(mode="after")
    def _placeholders_match(self) -> Turn:
        n = self.content.count(IMAGE_PLACEHOLDER)
        if n != len(self.images):
            raise ValueError(
                f"turn has {n} {IMAGE_PLACEHOLDER!r} placeholders but {len(self.images)} images"
            )
        if self.logprobs and len(self.logprobs) != len(self.token_ids) + (self.stop_token_id is not None):
            raise ValueError(f"turn has {len(self.logprobs)} log-probs for {len(self.token_ids)} token ids"
                             f"{' and a stop token' if self.stop_token_id is not None else ''}")
        end = 0
        for start, stop in self.forced:
            if not end <= start < stop <= len(self.content):
                raise ValueError(f"forced spans must be sorted, disjoint, non-empty and inside the content "
                                 f"({len(self.content)} characters): {self.forced}")
            end = stop
        return self


class StopReason(StrEnum):
    """Why a rollout ended. Exactly one per trajectory."""

    ANSWER = "answer"  # a valid program was produced
    INVALID_ANSWER = "invalid_answer"  # the last answer failed validation (see violations)
    NO_ANSWER = "no_answer"  # the policy-call budget ran out without an answer
    POLICY_ERROR = "policy_error"  # the policy backend failed (network, server error) after retries
    EMPTY_REQUEST = "empty_request"  # nothing to do: the request was empty


class ToolCallRecord(_Record):
    """A tool call the agent executed, for reports and rewards (the turn text keeps the raw form)."""

    round: int
    name: str
    arguments: dict[str, Any]
    error: str | None = None
    repeated: bool = False
    seconds: float = 0.0
    n_images: int = 0


class Trajectory(_Record):
    """One rollout: the whole conversation, what was retrieved, and how it ended."""

    schema_version: str = SCHEMA_VERSION
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    request: str
    turns: list[Turn] = Field(default_factory=list)
    program: Program | None = None
    stop_reason: StopReason = StopReason.NO_ANSWER
    failure: str | None = None  # human-readable reason when ``program`` is None
    violations: list[str] = Field(default_factory=list)  # names from genevolve.validation
    retrieved: list[RetrievedImage] = Field(default_factory=list)
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    n_policy_calls: int = 0
    n_tool_calls: int = 0
    n_format_errors: int = 0
    timings: dict[str, float] = Field(default_factory=dict)  # seconds: "policy", "tools", "total"
    backends: dict[str, str] = Field(default_factory=dict)  # role -> backend name
    meta: dict[str, Any] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.program is not None and self.stop_reason == StopReason.ANSWER

    def save(self, path: str | Path) -> None:
        write_text_atomic(Path(path), self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Trajectory:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def dumps(obj: Any) -> str:
    """Compact JSON for one jsonl line."""
    if isinstance(obj, BaseModel):
        return obj.model_dump_json()
    return json.dumps(obj, ensure_ascii=False)

"""RubricJudge: the paper's image judge (METHOD.md section 2) over any OpenAI-compatible VLM endpoint.

The judge model sees the original request, image 1 = the generated image and image 2 = the
ground-truth image (without a GT: a prompt variant with image 1 only). The rubric text lives in
``prompts/rubric*.md``: list the request's hard constraints, then score faithfulness,
visual_correctness, text_accuracy (``null`` = N/A when no text is required) and aesthetics on
{0, 0.5, 1}, each with a short rationale written before its score, as one JSON object.

``EndpointJudge`` holds what the rubric and the program-sufficiency judge (``sufficiency.py``) share:

- transport: an :class:`~genevolve.policy.openai_compat.OpenAIPolicy` (key from the environment,
  retries with backoff on 408/409/429/5xx and timeouts, 401/403/404 raised as ``ConfigError``);
  temperature 0; the answer's JSON schema sent as ``response_format`` (``structured="openai"``,
  accepted by OpenAI, vLLM, SGLang and most gateways; ``structured="none"`` for servers that reject it);
- limits: a :class:`~genevolve.ratelimit.RateLimiter` around each judge call (requests per minute and
  in flight), private or shared by ``limit_group``. Transport retries inside one call are not counted
  again: they already wait out the server's Retry-After;
- images: flattened on white, long side capped at ``max_image_side``, JPEG q92 data URLs, encoded in a
  worker thread so many concurrent judgements do not stall the event loop;
- parsing: strict JSON, then repair (code fences, the outermost ``{...}``, trailing commas, "0.5" as
  0.5, "N/A" as null, values snapped to the scale); a reply that still fails is answered with the
  parse error and asked again (``parse_retries`` times) before ``JudgeError`` carries the raw text;
- caching: ``JudgeCache`` keyed by (kind, rubric version, model, request, sha256 of each image's JPEG
  bytes as sent); a hit makes no request. The raw reply is stored and re-parsed on a hit, so the parser stays the one authority.

``JudgeError`` is an expected failure: the caller records a failed judgement (reward 0, counted as
``judge_error``). Configuration errors (bad key, unknown model) raise ``ConfigError``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import re
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, ClassVar

from PIL import Image

from genevolve.judge.base import Judge, JudgeError, Score, snap
from genevolve.judge.cache import JudgeCache, cache_key
from genevolve.policy.base import Constraint, PolicyError, Sampling
from genevolve.policy.openai_compat import OpenAIPolicy, Structured
from genevolve.ratelimit import RateLimiter, shared_limiter
from genevolve.registry import ConfigError
from genevolve.types import IMAGE_PLACEHOLDER, Program, Turn

PROMPTS = Path(__file__).parent / "prompts"
DIMENSIONS = ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics")
_NA = {"n/a", "na", "none", "null", "not applicable", "-", ""}
_FENCE = re.compile(r"```[A-Za-z]*\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
REASK = ("Your reply could not be used: {error}. Reply again with only the JSON object that the schema "
         "describes, with no other text.")


# -- parsing -----------------------------------------------------------------------------------


def extract_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a judge's reply: the reply itself, else a fenced block, else the outermost
    ``{...}``; each also tried without trailing commas. Raises ``JudgeError``."""
    candidates = [text, *(m.group(1) for m in _FENCE.finditer(text))]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        for variant in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                value = json.loads(variant)
            except (ValueError, RecursionError):
                continue
            if isinstance(value, dict):
                return value
    raise JudgeError("the reply holds no JSON object", raw=text)


def to_unit(value: Any) -> float | None:
    """A score in [0, 1] from a number or numeric string; ``None`` for null / "N/A". Raises ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"score {value!r} is not a number")
    if isinstance(value, str):
        word = value.strip().lower().rstrip(".")
        if word in _NA:
            return None
        value = word
    x = float(value)
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(f"score {value!r} is outside [0, 1]")
    return x


def entry(obj: dict[str, Any], field: str) -> tuple[Any, str]:
    """``(score, rationale)`` from ``{"field": {"rationale", "score"}}`` or the flat
    ``{"field": score, "field_rationale": ...}``."""
    if field not in obj:
        raise ValueError(f"missing {field!r}")
    value = obj[field]
    if isinstance(value, dict):
        if "score" not in value:
            raise ValueError(f"{field!r} has no 'score'")
        return value["score"], str(value.get("rationale") or "")
    return value, str(obj.get(f"{field}_rationale") or "")


def parse_with(text: str, read: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Extract the JSON object and read it; any malformation becomes ``JudgeError`` with the raw text."""
    obj = extract_json_object(text)
    try:
        return read(obj)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise JudgeError(str(exc) or type(exc).__name__, raw=text) from None


def _read_rubric(obj: dict[str, Any]) -> dict[str, Any]:
    scores: dict[str, float | None] = {}
    rationales: dict[str, str] = {}
    for dim in DIMENSIONS:
        value, rationales[dim] = entry(obj, dim)
        x = to_unit(value)
        if x is None and dim != "text_accuracy":
            raise ValueError(f"{dim!r} must be scored (only text_accuracy may be N/A)")
        scores[dim] = None if x is None else snap(x)
    raw_constraints = obj.get("constraints") or []
    if not isinstance(raw_constraints, list):
        raw_constraints = [raw_constraints]
    return {"scores": scores, "rationales": rationales, "constraints": [str(c) for c in raw_constraints]}


def parse_rubric(text: str) -> dict[str, Any]:
    """``{"scores": {dim: 0|0.5|1|None}, "rationales": {dim: str}, "constraints": [str]}``; raises JudgeError."""
    return parse_with(text, _read_rubric)


def _scored(nullable: bool, values: list[float]) -> dict[str, Any]:
    score: dict[str, Any] = {"type": "number", "enum": values}
    if nullable:
        score = {"anyOf": [score, {"type": "null"}]}
    return {"type": "object", "properties": {"rationale": {"type": "string"}, "score": score},
            "required": ["rationale", "score"], "additionalProperties": False}


RUBRIC_SCHEMA: dict[str, Any] = {
    "title": "rubric_judgement",
    "type": "object",
    "properties": {
        "constraints": {"type": "array", "items": {"type": "string"}},
        **{dim: _scored(dim == "text_accuracy", [0, 0.5, 1]) for dim in DIMENSIONS},
    },
    "required": ["constraints", *DIMENSIONS],
    "additionalProperties": False,
}


# -- prompts and images -------------------------------------------------------------------------


@cache
def prompt_text(name: str) -> str:
    return (PROMPTS / name).read_text(encoding="utf-8")


def sections(name: str) -> dict[str, str]:
    """A prompt file split at ``--- name`` lines."""
    parts = re.split(r"^--- (\w+)\n", prompt_text(name), flags=re.MULTILINE)
    return {key: body.strip() for key, body in zip(parts[1::2], parts[2::2], strict=True)}


def rubric_system_prompt(with_gt: bool) -> str:
    variant = sections("rubric_with_gt.md" if with_gt else "rubric_without_gt.md")
    return Template(prompt_text("rubric.md")).substitute(
        image_setup=variant["image_setup"], visual_rule=variant["visual_rule"],
        aesthetics_rule=variant["aesthetics_rule"], schema=json.dumps(RUBRIC_SCHEMA, indent=1)).strip()


def safe_text(text: str) -> str:
    """User or model text placed in a turn: a literal ``<image>`` would read as an image slot."""
    return text.replace(IMAGE_PLACEHOLDER, "[image]")


def jpeg_bytes(img: Image.Image, max_side: int) -> bytes:
    """``img`` as the judge sees it: flattened on white, long side at most ``max_side``, JPEG q92.

    The cache key hashes these bytes, i.e. exactly what was sent: cheaper than hashing pixels (the
    encoding is needed anyway) and a changed size cap or encoder rightly counts as a new judgement.
    """
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.getchannel("A"))
    elif img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    if max(img.size) > max_side:  # resize() returns a new image: the caller's is never modified
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the shared endpoint machinery ---------------------------------------------------------------


class EndpointJudge:
    """A judge served by an OpenAI-compatible VLM: limits, caching, asking and re-asking.

    Args:
        model: the served model name (``vllm serve --served-model-name``, or an API model id).
        base_url: server root including ``/v1``; ``None`` means api.openai.com (needs a key).
        api_key_env: environment variable holding the key; read once, never logged.
        max_concurrency: judge calls in flight at once (ignored when ``limiter`` is given).
        requests_per_minute: sustained call rate; ``None`` = unlimited (ignored when ``limiter`` is given).
        cache_dir: where judgements are cached; ``None`` = ``$GENEVOLVE_CACHE/judge``.
        timeout: seconds per HTTP attempt.
        max_retries: transport retries after the first attempt (server errors, timeouts, 429).
        max_image_side: long-side cap in pixels for every image sent.
        use_cache: ``False`` to neither read nor write the cache.
        parse_retries: how often an unparsable reply is answered with its error and asked again.
        structured: how the answer schema is sent (see the module docstring).
        limit_group: judges (and other workers) naming the same group share one limiter.
        limiter: an explicit shared limiter (takes precedence over the three settings above).
        max_tokens: reply budget; reasoning models need more.
        extra_body: extra request fields (e.g. ``{"top_k": 1}`` for vLLM).
        name: label in scores and reports; default ``<kind>:<model>``.
    """

    kind: ClassVar[str] = "endpoint"
    prompt_files: ClassVar[tuple[str, ...]] = ()
    schema: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        requests_per_minute: float | None = None,
        cache_dir: str | Path | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        max_image_side: int = 1024,
        *,
        use_cache: bool = True,
        parse_retries: int = 2,
        structured: Structured = "openai",
        limit_group: str | None = None,
        limiter: RateLimiter | None = None,
        max_tokens: int = 2048,
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
        backoff_base: float = 0.5,
    ) -> None:
        if parse_retries < 0 or max_image_side < 16:
            raise ConfigError("parse_retries must be >= 0 and max_image_side >= 16")
        self.model = model
        self.name = name or f"{self.kind}:{model}"
        self.max_image_side = max_image_side
        self.parse_retries = parse_retries
        if limiter is None:
            limiter = (shared_limiter(limit_group, requests_per_minute, max_concurrency) if limit_group
                       else RateLimiter(requests_per_minute, max_concurrency))
        self.limiter = limiter
        self._prepare_gate = RateLimiter(max_concurrency=limiter.max_concurrency or max_concurrency)
        self.cache = JudgeCache(cache_dir) if use_cache else None
        # The limiter bounds concurrency; the policy's own per-loop semaphore must not be tighter.
        self._policy = OpenAIPolicy(
            model, base_url=base_url, api_key_env=api_key_env, accepts_images=True, timeout=timeout,
            max_retries=max_retries, extra_body=extra_body, structured=structured, name=self.name,
            max_concurrency=1_000_000, max_image_side=max_image_side, backoff_base=backoff_base)
        self.base_url = self._policy.base_url
        # top_p 1 with temperature 0: greedy decoding, the judge's answer as reproducible as the server allows.
        self._sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
        self._constraint = None if structured == "none" else Constraint(kind="json_schema", value=self.schema)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, limiter={self.limiter!r})"

    @classmethod
    def version(cls) -> str:
        """``<kind>/1+<hash of the prompt files>``: editing a rubric invalidates cached judgements."""
        h = hashlib.sha256("".join(prompt_text(f) for f in cls.prompt_files).encode())
        h.update(json.dumps(cls.schema, sort_keys=True).encode())
        return f"{cls.kind}/1+{h.hexdigest()[:10]}"

    async def aclose(self) -> None:
        await self._policy.aclose()

    async def _judge(self, describe: Callable[[], dict[str, Any]], build_turns: Callable[[], list[Turn]],
                     parse: Callable[[str], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Read the cache or ask, and parse: ``(parsed answer, info)`` with info's cached/attempts.

        ``describe`` returns what identifies the judgement (request, image hashes); ``build_turns``
        makes the conversation. Both run in one worker-thread job per call, and at most
        ``max_concurrency`` calls prepare ahead of a free request slot: the encoding (which holds the
        GIL) then overlaps other calls' network waits instead of all queued calls encoding before any
        can send.
        """
        started = time.monotonic()
        async with self._prepare_gate:
            key, parts, answer, turns = await asyncio.to_thread(
                self._lookup_or_build, describe, build_turns, parse)
            if answer is not None:
                return answer, {"cached": True, "attempts": 0}
            slot = await self.limiter.__aenter__()  # hold a request slot before the next call prepares
        raw, error = "", ""
        for attempt in range(1, self.parse_retries + 2):
            try:
                slot = slot or await self.limiter.__aenter__()
                raw = await self._policy.achat(turns, sampling=self._sampling, constraint=self._constraint)
            except PolicyError as exc:
                raise JudgeError(str(exc), raw=raw) from None
            finally:
                if slot is not None:
                    slot = None
                    await self.limiter.__aexit__(None, None, None)
            try:
                answer = parse(raw)
            except JudgeError as exc:
                error = str(exc)
                turns = [*turns, Turn(role="assistant", content=safe_text(raw)),
                         Turn(role="user", content=REASK.format(error=error))]
                continue
            if self.cache is not None:
                self.cache.put(key, {"key": key, "kind": self.kind, "version": self.version(),
                                     "model": self.model, "judge": self.name, "parts": parts, "raw": raw,
                                     "attempts": attempt, "seconds": round(time.monotonic() - started, 3)})
            return answer, {"cached": False, "attempts": attempt}
        raise JudgeError(f"{self.name}: no valid judgement after {self.parse_retries + 1} attempt(s): {error}",
                         raw=raw)

    def _lookup_or_build(self, describe: Callable[[], dict[str, Any]], build_turns: Callable[[], list[Turn]],
                         parse: Callable[[str], dict[str, Any]]) -> tuple[str, dict, dict | None, list[Turn]]:
        parts = describe()
        key = cache_key({"kind": self.kind, "version": self.version(), "model": self.model, **parts})
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None and isinstance(hit.get("raw"), str):
            try:
                return key, parts, parse(hit["raw"]), []
            except JudgeError:
                pass  # written by an older parser: ask again and overwrite
        return key, parts, None, build_turns()


# -- the rubric judge ----------------------------------------------------------------------------


class RubricJudge(EndpointJudge, Judge):
    """The four-dimension rubric judge; see the module docstring. ``program`` and ``meta`` are ignored:
    the paper's judge sees only the request and the images."""

    kind = "rubric"
    prompt_files = ("rubric.md", "rubric_with_gt.md", "rubric_without_gt.md")
    schema = RUBRIC_SCHEMA

    def turns(self, request: str, image: bytes, gt_image: bytes | None) -> list[Turn]:
        """The conversation sent to the judge, from the images' JPEG bytes (see :func:`jpeg_bytes`)."""
        images = [data_url(image)]
        content = f"Request:\n<request>\n{safe_text(request)}\n</request>\n\nImage 1 (generated): {IMAGE_PLACEHOLDER}"
        if gt_image is not None:
            images.append(data_url(gt_image))
            content += f"\nImage 2 (ground truth): {IMAGE_PLACEHOLDER}"
        return [Turn(role="system", content=rubric_system_prompt(gt_image is not None)),
                Turn(role="user", content=content, images=images)]

    async def ascore(self, request: str, image: Image.Image, *, gt_image: Image.Image | None = None,
                     program: Program | None = None, meta: dict[str, Any] | None = None) -> Score:
        jpegs: list[bytes | None] = []

        def describe() -> dict[str, Any]:  # runs in the judge's worker thread
            jpegs.extend([jpeg_bytes(image, self.max_image_side),
                          None if gt_image is None else jpeg_bytes(gt_image, self.max_image_side)])
            return {"request": request, "image": digest(jpegs[0]), "gt": jpegs[1] and digest(jpegs[1])}

        answer, info = await self._judge(describe, lambda: self.turns(request, jpegs[0], jpegs[1]), parse_rubric)
        s, why = answer["scores"], answer["rationales"]
        return Score.from_dimensions(
            s["faithfulness"], s["visual_correctness"], s["text_accuracy"], s["aesthetics"],
            constraints=answer["constraints"], judge=self.name,
            rationale="\n".join(f"{dim}: {why[dim]}" for dim in DIMENSIONS if why[dim]),
            diagnostics={"rationales": why, "with_gt": gt_image is not None, "cached": info["cached"],
                         "attempts": info["attempts"], "version": self.version()})

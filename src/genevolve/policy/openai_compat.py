"""A policy served over the OpenAI Chat Completions protocol: vLLM, SGLang, OpenAI or any gateway.

Why the choices below:

- Retries are ours (the SDK's are turned off): the count and backoff are configuration, and the final
  error must name the server and the status without echoing the API key.
- Fault split (base.py): connection errors, timeouts, 408/409/429 and 5xx are retried and end in
  ``PolicyError`` (one rollout lost); 401/403/404 are the user's configuration (key, model name,
  URL, or a runtime LoRA adapter missing from some of a server's API processes: the 404 says to start
  vLLM with ``--api-server-count 1``) and raise ``ConfigError`` at once; other 4xx (context too long,
  bad image) are ``PolicyError`` without retry, since resending the same request cannot help.
- One client per event loop: the SDK's connection pool is bound to the loop that opened it, and
  :meth:`Policy.chat` runs each call in a fresh loop.
- Structured outputs go in the server's own request field, chosen by ``structured``:
  ``vllm`` (vLLM >= 0.12: ``structured_outputs: {grammar|regex|json}``), ``vllm-legacy``
  (``guided_grammar|guided_regex|guided_json``, removed in vLLM 0.12), ``openai`` (JSON schema via
  ``response_format``; grammar and regex unsupported), ``none``; ``auto`` picks ``openai`` for
  api.openai.com and ``vllm`` for any other URL.
- The request body is built here and posted as is (``client.post``), not through
  ``chat.completions.create``: the SDK's per-call walk over the typed parameters costs about 3 ms per
  call on a multimodal message, which at 16 judge calls in flight was the event loop's largest cost
  (``benchmarks/judge_throughput.py``). Retries, errors and the response type are the SDK's as before.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import re
from typing import Any, Literal

import openai
from openai.types.chat import ChatCompletion

from genevolve.policy.base import Constraint, Policy, PolicyError, Reply, Sampling, UnsupportedConstraint
from genevolve.policy.messages import DEFAULT_MAX_SIDE, to_openai_messages
from genevolve.registry import ConfigError
from genevolve.types import Turn

OPENAI_BASE_URL = "https://api.openai.com/v1"
NO_KEY = "EMPTY"  # what vLLM and SGLang accept when they run without --api-key
RETRYABLE_STATUS = frozenset({408, 409, 429})
# A 404 for a model that was just served elsewhere: vLLM registers a LoRA adapter loaded at runtime only in the
# API process that took the load, and `vllm serve --data-parallel-size N` runs N of them by default.
NOT_FOUND_HINT = ("; a LoRA adapter loaded at runtime must be loaded in every API process of the server: start "
                  "vLLM with --api-server-count 1 (data parallelism starts one API process per rank)")
Structured = Literal["auto", "vllm", "vllm-legacy", "openai", "none"]

_VLLM_FIELDS = {"grammar": "grammar", "regex": "regex", "json_schema": "json"}
_VLLM_LEGACY_FIELDS = {"grammar": "guided_grammar", "regex": "guided_regex", "json_schema": "guided_json"}


def _is_openai(base_url: str) -> bool:
    return base_url.rstrip("/") == OPENAI_BASE_URL


def _schema_name(schema: Any) -> str:
    """OpenAI requires a name matching ``[a-zA-Z0-9_-]{1,64}``; derive it from the schema title."""
    title = schema.get("title", "") if isinstance(schema, dict) else ""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", str(title))[:64] or "output"


def constraint_fields(constraint: Constraint, structured: str) -> dict[str, Any]:
    """The request fields that make a server enforce ``constraint``.

    Returns ``{"extra_body": {...}}`` (fields the SDK does not know) or ``{"response_format": {...}}``.
    Raises ``UnsupportedConstraint`` when the chosen dialect cannot express the kind.
    """
    kind, value = constraint.kind, constraint.value
    if structured == "vllm":
        return {"extra_body": {"structured_outputs": {_VLLM_FIELDS[kind]: value}}}
    if structured == "vllm-legacy":
        return {"extra_body": {_VLLM_LEGACY_FIELDS[kind]: value}}
    if structured == "openai" and kind == "json_schema":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(value), "schema": value, "strict": True},
            }
        }
    raise UnsupportedConstraint(f"structured={structured!r} cannot enforce {kind!r} constraints")


def _merge_body(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``, merging one level of nested dicts (e.g. ``structured_outputs``)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def request_body(request: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for ``build_request``'s keyword arguments: ``extra_body`` merged in at the top level,
    as ``chat.completions.create`` would send it."""
    body = {k: v for k, v in request.items() if k != "extra_body"}
    body.update(request.get("extra_body") or {})
    return body


def _sampled_tokens(choice: Any) -> tuple[list[int], list[float]]:
    """Token ids and log-probs of a choice's content, from ``logprobs.content`` entries whose token reads
    ``token_id:N`` (vLLM's ``return_tokens_as_token_ids``); empty when any entry lacks an id. The stop
    token is not among them (servers leave it out), so its log-prob stays unknown."""
    entries = getattr(getattr(choice, "logprobs", None), "content", None) or []
    ids, logprobs = [], []
    for entry in entries:
        token = getattr(entry, "token", "")
        if not token.startswith("token_id:") or not token[9:].lstrip("-").isdigit():
            return [], []
        ids.append(int(token[9:]))
        logprobs.append(float(entry.logprob))
    return ids, logprobs


def _retry_after(response: Any) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


class OpenAIPolicy(Policy):
    """Chat Completions client for one model on one server.

    Args:
        model: the served model name (``vllm serve --served-model-name``, or an OpenAI model id).
        base_url: server root including ``/v1``; ``None`` means api.openai.com.
        api_key_env: environment variable holding the key, read once here; never logged.
        accepts_images: send images as content parts (a VLM); otherwise image placeholders are dropped.
        timeout: seconds per HTTP attempt.
        max_retries: retries after the first attempt on transient failures (0 = one attempt).
        extra_body: extra request fields for every call (e.g. ``{"top_k": 20}`` for vLLM).
        structured: how constraints are sent; see the module docstring.
        name: label for trajectories and reports; default ``openai:<model>``.
        max_concurrency: requests in flight at once from this policy (per event loop).
        max_image_side: long-side cap, in pixels, for inlined local images.
        backoff_base, backoff_max: seconds; the n-th retry waits about ``base * 2**(n-1)`` (jittered), capped.
        logprobs: ask for each sampled token's id and log-prob (``logprobs`` and vLLM's
            ``return_tokens_as_token_ids``; SGLang accepts both too) and record them on the reply, so a
            learner can check its log-probs against the server's (``evolve.sampler_logps``). vLLM reports
            the raw model's log-probs (temperature 1) unless started with ``--logprobs-mode
            processed_logprobs``; a learner sampling at another temperature then sees a gap and corrects
            for it. Off by default: OpenAI's own API has no token ids.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        accepts_images: bool = False,
        timeout: float = 120.0,
        max_retries: int = 4,
        extra_body: dict[str, Any] | None = None,
        structured: Structured = "auto",
        name: str | None = None,
        max_concurrency: int = 32,
        max_image_side: int = DEFAULT_MAX_SIDE,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        logprobs: bool = False,
    ) -> None:
        if structured not in ("auto", "vllm", "vllm-legacy", "openai", "none"):
            raise ConfigError(f"structured={structured!r}; expected auto, vllm, vllm-legacy, openai or none")
        if max_retries < 0 or max_concurrency < 1:
            raise ConfigError("max_retries must be >= 0 and max_concurrency >= 1")
        self.model = model
        self.base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if not key and _is_openai(self.base_url):
            raise ConfigError(
                f"policy model {model!r} at {self.base_url} needs an API key: set the environment "
                f"variable {api_key_env or 'OPENAI_API_KEY'}"
            )
        self._api_key = key or NO_KEY
        self.api_key_env = api_key_env
        self.accepts_images = accepts_images
        self.timeout = timeout
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self.structured = (
            ("openai" if _is_openai(self.base_url) else "vllm") if structured == "auto" else structured
        )
        self.name = name or f"openai:{model}"
        self.max_concurrency = max_concurrency
        self.max_image_side = max_image_side
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.logprobs = logprobs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return (
            f"OpenAIPolicy(model={self.model!r}, base_url={self.base_url!r}, structured={self.structured!r})"
        )

    def build_request(
        self, turns: list[Turn], sampling: Sampling, constraint: Constraint | None = None
    ) -> dict:
        """The keyword arguments for ``chat.completions.create`` (no I/O; raises UnsupportedConstraint)."""
        request: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(
                turns, accepts_images=self.accepts_images, max_side=self.max_image_side
            ),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.seed is not None:
            request["seed"] = sampling.seed
        body = self.extra_body
        if self.logprobs:
            request["logprobs"] = True
            body = _merge_body(body, {"return_tokens_as_token_ids": True})
        if constraint is not None:
            fields = constraint_fields(constraint, self.structured)
            body = _merge_body(body, fields.pop("extra_body", {}))
            request.update(fields)
        if body:
            request["extra_body"] = body
        return request

    async def achat(
        self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None
    ) -> str:
        return (await self.areply(turns, sampling=sampling, constraint=constraint)).text

    async def areply(
        self, turns: list[Turn], *, sampling: Sampling, constraint: Constraint | None = None
    ) -> Reply:
        request = self.build_request(turns, sampling, constraint)
        client, semaphore = self._client_for_loop()
        async with semaphore:
            response = await self._create(client, request)
        choices = getattr(response, "choices", None)
        if not choices:
            raise PolicyError(f"{self.name}: {self.base_url} returned no choices for model {self.model!r}")
        text = choices[0].message.content or ""
        ids, logprobs = _sampled_tokens(choices[0]) if self.logprobs else ([], [])
        return Reply(text=text, token_ids=ids, logprobs=logprobs, truncated=choices[0].finish_reason == "length")

    async def aclose(self) -> None:
        client, loop = self._client, self._loop
        self._client = self._loop = self._semaphore = None
        if client is not None and loop is asyncio.get_running_loop():
            await client.close()

    def _client_for_loop(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client from a finished loop is dropped, not closed: its loop can no longer run the close.
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0
            )
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        assert self._semaphore is not None
        return self._client, self._semaphore

    def _redact(self, text: str) -> str:
        if self._api_key != NO_KEY:
            text = text.replace(self._api_key, "***")
        return text[:500]

    async def _create(self, client: openai.AsyncOpenAI, request: dict[str, Any]) -> Any:
        """One request with retries; see the module docstring for which failures are retried."""
        where = f"{self.name}: {self.base_url} (model {self.model!r})"
        body = request_body(request)
        last_error = ""
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt, retry_after))
            retry_after = None
            try:
                return await client.post("/chat/completions", body=body, cast_to=ChatCompletion)
            except openai.APITimeoutError:
                last_error = f"timeout after {self.timeout:g}s"
            except openai.APIConnectionError as exc:
                last_error = f"connection error: {self._redact(str(exc.__cause__ or exc))}"
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = f"HTTP {status}: {self._redact(exc.message)}"
                if status in (401, 403):
                    raise ConfigError(f"{where} refused the key from ${self.api_key_env}: {detail}") from None
                if status == 404:
                    raise ConfigError(f"{where}: model or endpoint not found: {detail}{NOT_FOUND_HINT}") from None
                if status < 500 and status not in RETRYABLE_STATUS:
                    raise PolicyError(f"{where} rejected the request: {detail}") from None
                last_error = detail
                retry_after = _retry_after(exc.response)
        attempts = self.max_retries + 1
        raise PolicyError(f"{where} failed after {attempts} attempt(s); last error: {last_error}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter, so many rollouts hitting one server spread out."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

"""Serve the learner's newest LoRA adapter from the inference servers after every update.

After each optimizer step the trainer writes the adapter as a PEFT folder (``save_adapter``) and calls
``LoraSync.apublish(folder, step=...)``: every server replica loads it under a new name, the previous
adapter is unloaded, and the name the rollout policy must request next is returned (give it to
``RolloutPool.aset_model``). The servers read the folder themselves, so it must sit on a filesystem
they share with the trainer (``path_map`` rewrites the prefix when they mount it elsewhere).

Protocols (checked against the servers' own sources, 2026):

- ``vllm``: ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` and
  ``POST /v1/unload_lora_adapter {"lora_name"}``. The routes exist only when the server was started
  with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (and ``--enable-lora``); otherwise they answer 404
  ``{"detail": "Not Found"}``. Loading a name that is already loaded is a 400 ("has already been
  loaded"); a path the server cannot find is a 404 carrying an error body. Chat requests name the
  adapter itself as ``model``.
- ``sglang``: ``POST /load_lora_adapter`` and ``/unload_lora_adapter`` (server root, no ``/v1``),
  same fields, 400 with ``{"success": false, "error_message": ...}`` on failure. Start it with
  ``--enable-lora --max-lora-rank R --lora-target-modules ...``. Its OpenAI API selects an adapter
  by ``model: "<base model>:<adapter>"``; a bare adapter name silently serves the base model, so
  ``base_model`` is required here.

Why versioned names (``policy-step-000012``) and not one name reloaded in place: vLLM accepts
``load_inplace: true`` only in releases that include vllm-project/vllm#31326 (opened December 2025;
older servers answer 400 "already loaded"), and in-place reloads had open bugs in 2026 (the flag stuck on the stored request
made the adapter re-read from disk on every step, #33791; prefix-cache blocks of the old weights
could be reused, #42125). A fresh name gets a fresh adapter id, so neither can happen, and rollouts
still in flight keep the weights they started with. ``inplace: true`` is offered for servers where
the bugs are fixed and adapter slots are scarce.

Several API processes behind one URL: vLLM keeps the table of runtime-loaded adapters in each API
process, and a load reaches only the process that accepted its connection. Since January 2026
(vllm-project/vllm#32525) ``vllm serve --data-parallel-size N`` starts N API processes on one port
unless ``--api-server-count 1`` is given (later releases refuse runtime LoRA updating with more than
one); chat requests naming the new adapter that reach another process get 404 "The model ... does not
exist". So after loading, ``/v1/models`` is read ``verify_probes`` times per server, each over a new
connection (a kept-alive one would stay with one process), and every answer must list the adapter;
otherwise the publish fails with a ConfigError saying to start vLLM with ``--api-server-count 1``.

Which failures are retried: timeouts, connection errors, 408, 429, 502, 503 and 504 (a server
starting, restarting or overloaded). Every other answer is final: resending the same load cannot
change it. vLLM answers a load it cannot perform with 500 (older releases: 400), e.g. "LoRA rank 64
is greater than max_lora_rank 16"; 404 and 422 say the folder or the request is wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from genevolve.registry import ConfigError

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})  # a gateway or a server that is (re)starting or overloaded
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_ROUTES = {"vllm": ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"),
           "sglang": ("/load_lora_adapter", "/unload_lora_adapter")}


class LoraSyncError(RuntimeError):
    """A server did not load (or unload) the adapter after the retries; the message names it."""


class LoraSyncConfig(BaseModel):
    """Where and how the trained adapter is published."""

    model_config = ConfigDict(extra="forbid")

    servers: list[str] = Field(min_length=1, description="root URL of every data-parallel replica, e.g. "
                                                         "http://gpu0:8000 (a trailing /v1 is ignored); all must load")
    protocol: Literal["vllm", "sglang"] = Field("vllm", description="the servers' adapter-loading API")
    base_model: str | None = Field(None, description="sglang only: the served base model; requests then name "
                                                     "'<base_model>:<adapter>'")
    name_prefix: str = Field("policy", description="adapters are served as '<prefix>-step-000012'")
    inplace: bool = Field(False, description="vllm only: reload one name with load_inplace (vLLM with #31326); "
                                             "see the module docstring for why versioned names are the default")
    api_key_env: str | None = Field(None, description="environment variable holding the servers' API key "
                                                      "(sent as a bearer token, never logged)")
    timeout: float = Field(300.0, gt=0, description="seconds per HTTP attempt; loading reads the adapter from disk")
    max_retries: int = Field(3, ge=0, description="retries after the first attempt on timeouts, connection errors, "
                                                  "408, 429, 502, 503 and 504; other errors are final at once")
    backoff_base: float = Field(1.0, ge=0, description="seconds before the first retry; doubles each retry (jittered)")
    backoff_max: float = Field(30.0, ge=0, description="cap on one retry's wait")
    path_map: dict[str, str] = Field(default_factory=dict, description="adapter path prefix on this machine -> the "
                                                                       "same folder's prefix as the servers mount it")
    verify_probes: int = Field(8, ge=0, description="vllm only: after loading, read /v1/models this many times per "
                                                    "server, each over a new connection, and require the adapter in "
                                                    "every answer (catches several API processes behind one URL); "
                                                    "0 skips the check")

    @model_validator(mode="after")
    def _check(self) -> LoraSyncConfig:
        if not _NAME.match(self.name_prefix):
            raise ValueError(f"name_prefix {self.name_prefix!r}: use letters, digits, '.', '_' or '-'")
        if self.protocol == "sglang" and not self.base_model:
            raise ValueError("protocol sglang needs base_model: SGLang serves an adapter as '<base_model>:<adapter>'")
        if self.protocol == "sglang" and self.inplace:
            raise ValueError("inplace reloading is a vLLM option; SGLang loads each adapter under a new name")
        return self


def adapter_name(prefix: str, step: int) -> str:
    return f"{prefix}-step-{step:06d}"


class LoraSync:
    """Publishes adapter folders to every configured server and remembers which one is served.

    ``served`` is the adapter name loaded on all servers (None before the first publish). Names that
    could not be unloaded are retried at the next publish rather than failing a training step.
    """

    def __init__(self, config: LoraSyncConfig | dict[str, Any], *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config if isinstance(config, LoraSyncConfig) else LoraSyncConfig.model_validate(config)
        self.servers = [_root(url) for url in self.config.servers]
        self.served: str | None = None
        self._stale: dict[str, set[str]] = {server: set() for server in self.servers}
        self._transport = transport
        env = self.config.api_key_env
        self._key = os.environ.get(env, "") if env else ""
        if env and not self._key:
            raise ConfigError(f"lora_sync: api_key_env is {env!r} but that environment variable is empty")

    def model_name(self, adapter: str) -> str:
        """What a chat request must put in ``model`` to be served by ``adapter``."""
        if self.config.protocol == "sglang":
            return f"{self.config.base_model}:{adapter}"
        return adapter

    def publish(self, adapter_dir: str | Path, *, step: int) -> str:
        """Synchronous :meth:`apublish` (not from inside a running event loop)."""
        return asyncio.run(self.apublish(adapter_dir, step=step))

    async def apublish(self, adapter_dir: str | Path, *, step: int) -> str:
        """Load ``adapter_dir`` on every server, unload the previous adapter, return the model name.

        Raises ConfigError for the user's setup (runtime loading disabled, key refused, folder not
        visible to the server, adapter rank above ``--max-lora-rank``, several API processes behind one
        URL) and LoraSyncError when a server refuses the load or keeps failing; in every case the
        previous adapter stays served everywhere and the new one is unloaded where it had loaded.
        """
        folder = Path(adapter_dir).resolve()
        if not (folder / "adapter_config.json").is_file():
            raise ConfigError(f"{folder} is not a PEFT adapter folder (no adapter_config.json); save the model "
                              f"with save_adapter or model.save_pretrained")
        remote_path = self._remote_path(folder)
        name = self.config.name_prefix if self.config.inplace else adapter_name(self.config.name_prefix, step)
        async with self._client() as client:
            failed = await self._on_all(lambda s: self._load(client, s, name, remote_path))
            loaded = [s for s in self.servers if s not in failed]
            if not failed and self.config.protocol == "vllm" and self.config.verify_probes:
                failed = await self._on_all(lambda s: self._verify(s, name))
            if failed:
                if not self.config.inplace:
                    await asyncio.gather(*(self._unload_quietly(client, s, name) for s in loaded))
                raise _combined(failed, name, len(self.servers))
            previous, self.served = self.served, name
            if previous is not None and previous != name:
                for stale in self._stale.values():
                    stale.add(previous)
            await asyncio.gather(*(self._drop_stale(client, s) for s in self.servers))
        log.info("lora_sync: %s (%s) served by %d server(s)", name, remote_path, len(self.servers))
        return self.model_name(name)

    async def aclear(self) -> None:
        """Unload the served adapter (end of training); servers fall back to the base model."""
        if self.served is None:
            return
        async with self._client() as client:
            for stale in self._stale.values():
                stale.add(self.served)
            self.served = None
            await asyncio.gather(*(self._drop_stale(client, s) for s in self.servers))

    async def _on_all(self, call: Callable[[str], Awaitable[None]]) -> dict[str, BaseException]:
        """``call`` on every server at once; returns the servers where it raised, with what it raised."""
        results = await asyncio.gather(*(call(s) for s in self.servers), return_exceptions=True)
        return {s: r for s, r in zip(self.servers, results, strict=True) if isinstance(r, BaseException)}

    # -- one server ---------------------------------------------------------------------------------

    async def _load(self, client: httpx.AsyncClient, server: str, name: str, path: str) -> None:
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if self.config.inplace:
            body["load_inplace"] = True
        load_route = _ROUTES[self.config.protocol][0]
        response = await self._post(client, server, load_route, body)
        if response.is_success:
            return
        if response.status_code == 400 and _already_loaded(response):
            if self.config.inplace:
                raise ConfigError(f"{server} refused to reload adapter {name!r} in place ({_detail(response)}): "
                                  f"this vLLM predates load_inplace (vllm-project/vllm#31326); set inplace: false")
            # A leftover under this name (an earlier run, a crash mid-sync): replace it, so that the name
            # serves exactly the folder we were given.
            await self._unload(client, server, name)
            response = await self._post(client, server, load_route, body)
            if response.is_success:
                return
        raise self._refusal(server, "load", name, path, response)

    async def _unload(self, client: httpx.AsyncClient, server: str, name: str) -> None:
        response = await self._post(client, server, _ROUTES[self.config.protocol][1], {"lora_name": name})
        if response.is_success or (response.status_code == 404 and not _route_missing(response)):
            return  # unknown to the server: already gone (a restart, or an earlier unload that answered late)
        raise self._refusal(server, "unload", name, None, response)

    async def _unload_quietly(self, client: httpx.AsyncClient, server: str, name: str) -> None:
        try:
            await self._unload(client, server, name)
        except (ConfigError, LoraSyncError) as exc:
            log.warning("lora_sync: could not unload %s from %s: %s", name, server, exc)

    async def _drop_stale(self, client: httpx.AsyncClient, server: str) -> None:
        for name in sorted(self._stale[server]):
            try:
                await self._unload(client, server, name)
            except (ConfigError, LoraSyncError) as exc:
                log.warning("lora_sync: %s still holds %s (retried at the next publish): %s", server, name, exc)
            else:
                self._stale[server].discard(name)

    async def _verify(self, server: str, name: str) -> None:
        """Every API process behind ``server`` serves ``name``: see "Several API processes" in the module
        docstring. Each probe is a new client, hence a new connection, as a new rollout's request may be."""
        probes = self.config.verify_probes
        listed = 0
        for _ in range(probes):
            async with self._client() as fresh:
                response = await self._request(fresh, server, "/v1/models", None, what=f"listing {name!r}")
            listed += name in self._model_ids(server, response)
        if listed < probes:
            raise ConfigError(
                f"{server}/v1/models listed adapter {name!r} in {listed} of {probes} answers right after loading "
                f"it: several API processes serve this URL and only the one that took the load has the adapter, "
                f"so chat requests reaching the others would get 404. Start vLLM with --api-server-count 1 "
                f"(--data-parallel-size N starts N API processes by default), or start one server per GPU and "
                f"list each in lora_sync.servers")

    def _model_ids(self, server: str, response: httpx.Response) -> set[str]:
        """The model ids of a ``/v1/models`` answer; an answer of another shape is an error naming the server."""
        if response.status_code == 404:
            raise ConfigError(f"{server}/v1/models is not served (HTTP 404): the adapter check needs vLLM's OpenAI "
                              f"API; set lora_sync.verify_probes: 0 for a server without it")
        try:
            data = response.json()["data"] if response.is_success else None
            return {str(card["id"]) for card in data}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise LoraSyncError(f"{server}/v1/models answered HTTP {response.status_code} without a model list: "
                                f"{self._redact(_detail(response))}") from None

    async def _post(self, client: httpx.AsyncClient, server: str, route: str, body: dict[str, Any]) -> httpx.Response:
        return await self._request(client, server, route, body, what=repr(body["lora_name"]))

    async def _request(self, client: httpx.AsyncClient, server: str, route: str, body: dict[str, Any] | None, *,
                       what: str) -> httpx.Response:
        """POST ``body`` (GET when None), retrying transient failures only (``TRANSIENT_STATUS``,
        timeouts, connection errors); returns the first other response, success or not."""
        cfg = self.config
        last = ""
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            try:
                if body is None:
                    response = await client.get(server + route)
                else:
                    response = await client.post(server + route, json=body)
            except httpx.TimeoutException:
                last = f"timeout after {cfg.timeout:g}s"
                continue
            except httpx.TransportError as exc:
                last = f"connection error: {self._redact(str(exc))}"
                continue
            if response.status_code in TRANSIENT_STATUS:
                last = f"HTTP {response.status_code}: {self._redact(_detail(response))}"
                continue
            return response
        raise LoraSyncError(f"{server}{route} ({what}) failed after {cfg.max_retries + 1} "
                            f"attempt(s); last error: {last}")

    def _refusal(self, server: str, action: str, name: str, path: str | None, response: httpx.Response) -> Exception:
        status, detail = response.status_code, self._redact(_detail(response))
        route = _ROUTES[self.config.protocol][0 if action == "load" else 1]
        if status in (401, 403):
            return ConfigError(f"{server} refused the key from ${self.config.api_key_env}: HTTP {status}: {detail}")
        if status == 404 and _route_missing(response):
            if self.config.protocol == "vllm":
                return ConfigError(f"{server}{route} is not served (HTTP 404): start vLLM with "
                                   f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment and --enable-lora")
            return ConfigError(f"{server}{route} is not served (HTTP 404): is this an SGLang server (>= 0.4.9)?")
        if status == 404 and action == "load":
            return ConfigError(f"{server} cannot read adapter folder {path}: the servers must see the trainer's "
                               f"adapters on a shared filesystem (map differing mounts with path_map): {detail}")
        if action == "load" and re.search(r"max[_-]lora[_-]rank", detail):
            return ConfigError(f"{server} cannot serve adapter {name!r} (HTTP {status}: {detail}): restart it with "
                               f"--max-lora-rank at least the adapter's r, or train a smaller r")
        return LoraSyncError(f"{server} refused to {action} adapter {name!r}: HTTP {status}: {detail} "
                             f"(not retried: the same request would get the same answer)")

    # -- helpers ------------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        return httpx.AsyncClient(timeout=self.config.timeout, headers=headers, transport=self._transport)

    def _remote_path(self, folder: Path) -> str:
        path = str(folder)
        for local, remote in sorted(self.config.path_map.items(), key=lambda kv: -len(kv[0])):
            local = local.rstrip("/")
            if path == local or path.startswith(local + "/"):
                return remote.rstrip("/") + path[len(local):]
        return path

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    def _redact(self, text: str) -> str:
        return (text.replace(self._key, "***") if self._key else text)[:500]


def _root(url: str) -> str:
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def _detail(response: httpx.Response) -> str:
    """The server's error message: vLLM's ``{"error": {"message"}}`` (older: ``{"message"}``),
    SGLang's ``{"error_message"}``, FastAPI's ``{"detail"}``, else the raw text."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "error_message", "detail"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)[:500]


def _already_loaded(response: httpx.Response) -> bool:
    return "already" in _detail(response).lower()


def _route_missing(response: httpx.Response) -> bool:
    """FastAPI's own 404 (no such route), as opposed to a 404 the adapter handler wrote."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return True
    return isinstance(body, dict) and body.get("detail") == "Not Found"


def _combined(failed: dict[str, BaseException], name: str, n_servers: int) -> Exception:
    for exc in failed.values():
        if not isinstance(exc, ConfigError | LoraSyncError):
            raise exc  # a bug, not a server's answer
    lines = "; ".join(str(exc) for exc in failed.values())
    message = f"adapter {name!r} could not be served by {len(failed)} of {n_servers} server(s): {lines}"
    if any(isinstance(exc, ConfigError) for exc in failed.values()):
        return ConfigError(message)
    return LoraSyncError(message)


def save_adapter(model: Any, root: str | Path, *, step: int, keep: int = 3) -> Path:
    """Write ``model``'s LoRA adapter to ``root/step_000012`` atomically and keep the newest ``keep``.

    The folder appears only when complete (written beside it, then renamed), so a server never reads
    half an adapter. Call it on the main process only under accelerate. Older folders are deleted
    beyond ``keep`` (>= 2: the previous adapter may still be served while the new one loads).
    """
    if keep < 2:
        raise ValueError("keep must be >= 2: the previous adapter is still served until the new one loads")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    partial = root / f".partial_step_{step:06d}"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    if not (partial / "adapter_config.json").is_file():
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigError(f"{type(model).__name__}.save_pretrained wrote no adapter_config.json: only a PEFT "
                          f"(LoRA) model can be published to an inference server this way")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    steps = sorted((p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step_\d{6,}", p.name)),
                   key=lambda p: int(p.name[5:]))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final

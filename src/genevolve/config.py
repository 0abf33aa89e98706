"""Typed run configuration: defaults, then a YAML file, then CLI flags. Backends are named by ``kind``.

With no policy configured anywhere, the embedded offline stack (``genevolve.defaults``) fills every
unset role. Unset search and image search default to the offline backends, the renderer to collage.

Example ``run.yaml``::

    policy: {kind: openai, model: GenEvolve-8B, base_url: http://localhost:8000/v1}
    search: {kind: serper}
    image_search: {kind: serper}
    agent: {max_references: 2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genevolve.agent import Agent, AgentConfig
from genevolve.registry import ConfigError


class BackendSpec(BaseModel):
    """``kind`` names the backend (see the tables in genevolve.policy / genevolve.tools, or
    ``package.module:Class``); every other key is passed to its constructor."""

    model_config = ConfigDict(extra="allow")

    kind: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: BackendSpec | None = Field(None, description="the policy model (default: the embedded SmolLM2 policy)")
    search: BackendSpec | None = Field(None, description="text search backend for the `search` tool; null: tool absent")
    image_search: BackendSpec | None = Field(None, description="image search backend; null: tool absent")
    renderer: BackendSpec | None = Field(None, description="renders the program to DIR/image.png; null: no image")
    judge: BackendSpec | None = Field(None, description="scores rendered images (bench, demo)")
    knowledge: bool = Field(True, description="offer the `query_knowledge` tool with the eight skills")
    download: dict[str, Any] = Field(default_factory=dict, description="options of the safe image downloader")
    agent: AgentConfig = Field(default_factory=AgentConfig)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping; anything else is a ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (if any) and apply ``overrides`` (nested dicts are merged)."""
    data: dict[str, Any] = {} if path is None else read_yaml(path)
    _merge(data, overrides or {})
    data = _with_defaults(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """Fill unset roles: everything from the embedded stack when no policy is named, else only the
    offline tools and the collage renderer (a role explicitly set to null stays absent)."""
    from genevolve.defaults import embedded_defaults

    defaults = embedded_defaults()
    if data.get("policy") is None:
        base = defaults
    else:
        base = {k: defaults[k] for k in ("search", "image_search", "renderer", "judge")}
    _merge(base, data)
    for key, value in data.items():
        if value is None:
            base[key] = None
    return base


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def build_agent(cfg: RunConfig) -> Agent:
    """Construct the policy and tools a config names."""
    from genevolve.policy import POLICIES
    from genevolve.registry import build
    from genevolve.tools import build_tools

    if cfg.policy is None:
        raise ConfigError("no policy configured: pass --policy (e.g. --policy openai --base-url URL --model NAME), "
                          "set `policy:` in --config, or leave both out for the embedded default")
    policy = build(POLICIES, cfg.policy.kind, "policy", **cfg.policy.options)
    tools = build_tools(search=cfg.search, image_search=cfg.image_search, knowledge=cfg.knowledge,
                        download=cfg.download)
    return Agent(policy, tools, cfg.agent)


def build_renderer(cfg: RunConfig):
    """The configured renderer, or None."""
    from genevolve.registry import build
    from genevolve.render import RENDERERS

    return None if cfg.renderer is None else build(RENDERERS, cfg.renderer.kind, "renderer", **cfg.renderer.options)


def build_judge(cfg: RunConfig):
    """The configured judge, or None."""
    from genevolve.judge import JUDGES
    from genevolve.registry import build

    return None if cfg.judge is None else build(JUDGES, cfg.judge.kind, "judge", **cfg.judge.options)


def _spec(value: Any) -> BackendSpec | None:
    if value is None or isinstance(value, BackendSpec):
        return value
    if isinstance(value, str):
        return BackendSpec(kind=value)
    if isinstance(value, dict):
        return BackendSpec.model_validate(value)
    raise ConfigError(f"expected a backend name, a dict with 'kind', or an instance; got {type(value).__name__}")


def create_agent(policy: Any, *, search: Any = None, image_search: Any = None, knowledge: bool = True,
                 download: dict[str, Any] | None = None, **agent_options: Any) -> Agent:
    """The Python API: backends by name (``"serper"``), by spec (``{"kind": "openai", "model": ...}``)
    or as instances (a ``Policy``, a ``TextSearchBackend``/``ImageSearchBackend``).

    >>> agent = create_agent({"kind": "openai", "model": "GenEvolve-8B", "base_url": "http://localhost:8000/v1"},
    ...                      search="serper", image_search="serper", max_references=2)
    >>> agent.run("A watercolor of the Sydney Opera House at dawn").program
    """
    from genevolve.policy import POLICIES
    from genevolve.policy.base import Policy
    from genevolve.registry import build, resolve
    from genevolve.tools import TOOLS, build_tools
    from genevolve.tools.base_search import ImageSearchBackend, TextSearchBackend

    if not isinstance(policy, Policy):
        spec = _spec(policy)
        policy = build(POLICIES, spec.kind, "policy", **spec.options)
    tools = []
    if isinstance(search, TextSearchBackend):
        tools.append(resolve(TOOLS, "search", "tool")(search))
        search = None
    if isinstance(image_search, ImageSearchBackend):
        from genevolve.tools.download import ImageDownloader

        tools.append(resolve(TOOLS, "image_search", "tool")(image_search, ImageDownloader(**(download or {}))))
        image_search = None
    tools += build_tools(search=_spec(search), image_search=_spec(image_search), knowledge=knowledge, download=download)
    return Agent(policy, tools, AgentConfig(**agent_options))

"""Typed run configuration: defaults, then a YAML file, then CLI flags. Backends are named by ``kind``.

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

    policy: BackendSpec | None = Field(None, description="the policy model; required until an embedded default exists")
    search: BackendSpec | None = Field(None, description="text search backend for the `search` tool; none: tool absent")
    image_search: BackendSpec | None = Field(None, description="image search backend; none: tool absent")
    knowledge: bool = Field(True, description="offer the `query_knowledge` tool with the eight skills")
    download: dict[str, Any] = Field(default_factory=dict, description="options of the safe image downloader")
    agent: AgentConfig = Field(default_factory=AgentConfig)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (if any) and apply ``overrides`` (nested dicts are merged)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    _merge(data, overrides or {})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


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
        raise ConfigError("no policy configured: pass --policy (e.g. --policy openai --base-url URL --model NAME) "
                          "or set `policy:` in --config")
    policy = build(POLICIES, cfg.policy.kind, "policy", **cfg.policy.options)
    tools = build_tools(search=cfg.search, image_search=cfg.image_search, knowledge=cfg.knowledge,
                        download=cfg.download)
    return Agent(policy, tools, cfg.agent)

"""Backends named by a string: one visible ``kind -> "module:Class"`` table per backend package.

A kind may also be ``"my_pkg.module:Class"`` for user code. Classes are imported only when used,
so ``import genevolve`` never pulls torch, transformers or an HTTP SDK.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


class ConfigError(ValueError):
    """The user's configuration is wrong (unknown backend, missing key, bad value)."""


def resolve(table: dict[str, str], kind: str, what: str) -> type:
    target = table.get(kind, kind)
    if ":" not in target:
        valid = ", ".join(sorted(table))
        raise ConfigError(f"unknown {what} backend {kind!r}; valid names: {valid} (or 'package.module:Class')")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if module_name.startswith("genevolve."):
            raise  # a missing optional dependency: the backend module raises with an install hint
        raise ConfigError(f"{what} backend {kind!r}: cannot import {module_name!r} ({exc})") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{what} backend {kind!r}: {module_name!r} has no attribute {attr!r}") from exc


def build(table: dict[str, str], kind: str, what: str, **kwargs: Any) -> Any:
    """Construct the backend; options that do not fit its constructor are a configuration error."""
    cls = resolve(table, kind, what)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{what} backend {kind!r}: {exc} (options given: {', '.join(kwargs) or 'none'})") from exc
    except ValueError:  # no introspectable signature (C extensions): let the call itself report
        pass
    return cls(**kwargs)


class MissingDependency(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str) -> Any:
    """Import an optional dependency or raise an error naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{module!r} is not installed; install it with: pip install 'genevolve[{extra}]'"
        ) from exc

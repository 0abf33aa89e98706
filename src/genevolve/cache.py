"""Where genevolve keeps what it can rebuild: search indexes, rasterised images, converted models.

One root for every cache, so a user (or a test) can move or wipe them all with one variable:
``$GENEVOLVE_CACHE`` if set, else ``~/.cache/genevolve``. Everything under it is derived data;
deleting it costs only rebuild time.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GENEVOLVE_CACHE"


def cache_root() -> Path:
    """The cache root, read from the environment at call time (tests set it per test)."""
    root = os.environ.get(ENV_VAR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "genevolve"


def cache_dir(sub: str, root: str | Path | None = None) -> Path:
    """``<root>/<sub>``, created if missing. ``sub`` is a fixed name chosen by code, never user data.

    ``root`` overrides the environment (a backend's ``cache_dir=`` argument).
    """
    path = (Path(root).expanduser() if root is not None else cache_root()) / sub
    path.mkdir(parents=True, exist_ok=True)
    return path

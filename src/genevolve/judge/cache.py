"""Judgements cached on disk, one JSON file per key, so a rerun (or a resumed benchmark) pays nothing.

The key is the sha256 of everything that decides the judge's answer: the judge kind and its rubric
version (a hash of the prompt files, so editing a rubric invalidates old entries), the model, the
request and the sha256 of each image exactly as sent (the judge's own JPEG encoding, so the same
picture saved twice in different files still hits).

Files are written atomically (temporary file, then rename): a crash leaves an entry whole or absent,
and concurrent workers writing the same key are harmless. An unreadable entry counts as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from genevolve.cache import cache_dir


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class JudgeCache:
    """``<root>/<key[:2]>/<key>.json``; ``root`` defaults to ``$GENEVOLVE_CACHE/judge``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_dir("judge")

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False, indent=1)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

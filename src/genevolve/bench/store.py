"""Append-only JSONL logs that survive a kill: one record a line, each flushed and fsynced.

A process killed mid-write leaves at most one torn last line (no trailing newline, or not JSON);
``JsonlLog.load`` drops it and truncates the file back to the last complete record, so the next
append starts on a clean line. A bad line anywhere else is corruption and raises.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class RunFolderError(ValueError):
    """The run folder's files are not what this command expects."""


class JsonlLog:
    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}  # id -> latest record
        self.dropped_torn_line = False

    def load(self) -> JsonlLog:
        """Read every record (the latest per id wins); repair a torn last line."""
        if not self.path.is_file():
            return self
        data = self.path.read_bytes()
        good_end = 0
        lines = data.split(b"\n")
        for n, raw in enumerate(lines):
            complete = n < len(lines) - 1  # followed by a newline
            if not raw.strip():
                good_end += len(raw) + complete
                continue
            try:
                record = json.loads(raw)
                if not complete or not isinstance(record, dict) or "id" not in record:
                    raise ValueError("incomplete record")
            except ValueError:
                if n >= len(lines) - 2 and not any(x.strip() for x in lines[n + 1:]):
                    self._truncate(good_end)
                    break
                raise RunFolderError(f"{self.path}:{n + 1}: not a JSON record; the file is corrupt "
                                     "(only a torn last line is repaired)") from None
            self.records[str(record["id"])] = record
            good_end += len(raw) + 1
        return self

    def _truncate(self, size: int) -> None:
        self.dropped_torn_line = True
        with open(self.path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably before returning (the caller relies on it surviving a kill)."""
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.records[str(record["id"])] = record

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.records

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self.records.get(item_id)

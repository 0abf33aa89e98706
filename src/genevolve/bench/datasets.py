"""Benchmark inputs -> ``BenchItem`` records, from local copies of the public layouts.

| input | rows | GT |
|---|---|---|
| GenEvolve-Bench / GenEvolve-Data RL (``MeiGen-AI/GenEvolve-Data-Bench``), jsonl or parquet | ``{"id", "question" or "prompt", "gt_image": "images/…jpg", "eval_type", "category", "difficulty", "meta"}`` | yes |
| GenEvolve-Data SFT, jsonl or parquet | ``{"messages": [...], "images": [...]}``: the first user turn is the request | no |
| WISE prompt files (``*.json``) | a list of ``{"prompt_id", "Prompt", "Explanation", "Category", "Subcategory"}`` | no |
| plain requests | jsonl ``{"id"?, "request" or "prompt"}``, or ``.txt`` with one request a line | no |

A folder is read as every ``*.jsonl``/``*.parquet``/``*.json``/``*.txt`` file under it (sorted, the
``images/`` folder skipped); ``gt_image`` paths resolve inside the folder (the dataset root) and never
outside it. A bad row raises ``DatasetError`` naming ``file:line``, or with ``skip_bad=True`` is
skipped and reported in ``Dataset.skipped``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from genevolve.types import IMAGE_PLACEHOLDER

SUFFIXES = (".jsonl", ".parquet", ".json", ".txt")


class DatasetError(ValueError):
    """The benchmark input is malformed (the user's data, not a bug)."""


class BenchItem(BaseModel):
    """One benchmark request. ``gt_image`` is an absolute path inside the dataset root, or None."""

    model_config = ConfigDict(extra="forbid")

    id: str
    request: str
    gt_image: str | None = None
    track: str = ""  # eval_type: "knowledge" / "quality" on GenEvolve-Bench
    category: str = ""
    difficulty: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Dataset:
    items: list[BenchItem]
    root: Path
    kind: str  # "genevolve", "sft", "wise", "requests" or "mixed"
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of rows left out (skip_bad)


class _BadRow(ValueError):
    pass


def load_dataset(path: str | Path, *, skip_bad: bool = False, limit: int | None = None) -> Dataset:
    """Read a dataset file or folder. ``limit`` keeps the first N items (after skipping bad rows)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset {path} does not exist")
    root = (path if path.is_dir() else path.parent).resolve()
    files = _files(path)
    items: list[BenchItem] = []
    skipped: list[str] = []
    kinds: set[str] = set()
    seen: dict[str, str] = {}
    for file in files:
        for where, row in _rows(file):
            try:
                kind, item = _item(row, file, root, where)
                if item.id in seen:
                    raise _BadRow(f"duplicate id {item.id!r} (first at {seen[item.id]})")
            except _BadRow as exc:
                message = f"{where}: {exc}"
                if not skip_bad:
                    raise DatasetError(f"{message} (pass --skip-bad to skip bad rows)") from None
                skipped.append(message)
                continue
            seen[item.id] = where
            kinds.add(kind)
            items.append(item)
            if limit is not None and len(items) >= limit:
                return Dataset(items, root, _kind(kinds), skipped)
    if not items:
        raise DatasetError(f"dataset {path} holds no usable rows" + (f" ({len(skipped)} bad)" if skipped else ""))
    return Dataset(items, root, _kind(kinds), skipped)


def _kind(kinds: set[str]) -> str:
    return next(iter(kinds)) if len(kinds) == 1 else "mixed"


def _files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DatasetError(f"dataset file {path}: expected one of {', '.join(SUFFIXES)}")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                   and "images" not in p.relative_to(path).parts[:-1] and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"dataset folder {path} holds no {', '.join(SUFFIXES)} files")
    return files


def _rows(file: Path):
    """Yield ``("file:line", row)``; a row is a dict, or a str for .txt lines."""
    if file.suffix == ".txt":
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                yield f"{file}:{n}", line.strip()
    elif file.suffix == ".jsonl":
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield f"{file}:{n}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{file}:{n}", _BadRow(f"not valid JSON ({exc.msg})")
    elif file.suffix == ".json":
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(data, dict):
            data = data.get("data", data.get("rows"))
        if not isinstance(data, list):
            raise DatasetError(f"{file}: expected a JSON list of rows (WISE layout) or {{'data': [...]}}")
        for n, row in enumerate(data):
            yield f"{file}:[{n}]", row
    else:
        for n, row in enumerate(_parquet_rows(file)):
            yield f"{file}:row {n}", row


def _parquet_rows(file: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise DatasetError(f"{file}: reading parquet needs pyarrow: pip install 'genevolve[bench]' "
                           "(or pip install pyarrow), or convert the file to jsonl") from None
    return pq.read_table(file).to_pylist()


def _item(row: Any, file: Path, root: Path, where: str) -> tuple[str, BenchItem]:
    if isinstance(row, _BadRow):
        raise row
    default_id = f"{file.stem}-{where.rsplit(':', 1)[-1].strip('[]').replace('row ', '')}"
    if isinstance(row, str):
        return "requests", BenchItem(id=default_id, request=row)
    if not isinstance(row, dict):
        raise _BadRow(f"expected a JSON object, got {type(row).__name__}")
    if "Prompt" in row:
        return "wise", _wise(row, default_id)
    if "messages" in row:
        return "sft", _sft(row, default_id)
    request = row.get("question") or row.get("prompt") or row.get("request")
    if not isinstance(request, str) or not request.strip():
        raise _BadRow("expected a non-empty 'question', 'prompt' or 'request' string")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise _BadRow(f"'meta' must be an object, got {type(meta).__name__}")
    gt = row.get("gt_image")
    if isinstance(gt, list):  # some exports wrap the single GT in a list
        if len(gt) != 1:
            raise _BadRow(f"'gt_image' lists {len(gt)} images; expected one")
        gt = gt[0]
    item = BenchItem(
        id=_id(row.get("id"), default_id), request=request.strip(),
        gt_image=None if gt in (None, "") else resolve_inside(root, gt, file.parent),
        track=str(row.get("eval_type") or ""), category=str(row.get("category") or ""),
        difficulty=str(row.get("difficulty") or ""), meta=meta)
    return ("genevolve" if "gt_image" in row or "eval_type" in row else "requests"), item


def _id(value: Any, default: str) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str | int):
        raise _BadRow(f"'id' must be a string or an integer, got {type(value).__name__}")
    return str(value)


def resolve_inside(root: Path, rel: Any, *also: Path) -> str:
    """Resolve a row's relative image path inside ``root``; absolute paths and ``..`` escapes are refused.

    Tried against ``root`` first, then each of ``also`` (e.g. the jsonl file's own folder), each of
    which must itself be inside ``root``."""
    if not isinstance(rel, str):
        raise _BadRow(f"'gt_image' must be a relative path string, got {type(rel).__name__}")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or (p.parts and ":" in p.parts[0]):
        raise _BadRow(f"gt_image {rel!r} is absolute; expected a path relative to the dataset root {root}")
    for base in (root, *also):
        target = (base / p).resolve()
        if not target.is_relative_to(root):
            raise _BadRow(f"gt_image {rel!r} points outside the dataset root {root}")
        if target.is_file():
            return str(target)
    raise _BadRow(f"gt_image {rel!r} not found under the dataset root {root}")


def _wise(row: dict[str, Any], default_id: str) -> BenchItem:
    prompt = row.get("Prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _BadRow("WISE row: 'Prompt' must be a non-empty string")
    pid = row.get("prompt_id")
    meta = {k: row[k] for k in ("prompt_id", "Explanation", "Subcategory") if k in row}
    return BenchItem(id=_id(pid, default_id), request=prompt.strip(), track="wise",
                     category=str(row.get("Category") or ""), difficulty="", meta=meta)


def _sft(row: dict[str, Any], default_id: str) -> BenchItem:
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise _BadRow("SFT row: 'messages' must be a list")
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            request = m["content"].replace(IMAGE_PLACEHOLDER, "").strip()
            if request:
                return BenchItem(id=_id(row.get("id"), default_id), request=request, track="sft",
                                 meta={"n_messages": len(messages)})
    raise _BadRow("SFT row: no user message with text")

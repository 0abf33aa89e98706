"""SFT data: GenEvolve-Data SFT rows from jsonl/parquet files or folders, checked and tokenised.

A row is ``{"messages": [...], "images": [...]}`` (``genevolve.sft_rows``); image paths resolve
against the row file's folder. The offline world writes its expert trajectories as such rows
(``DIR/sft.jsonl``), so the public data and the world's data go through the same path. Rows that do
not parse, have no assistant turn, or exceed ``max_tokens`` are skipped and listed with the reason,
never cut: a truncated trajectory would teach the policy to stop mid-turn.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genevolve.evolve.tokens import ChatEncoder, TokenView, TokenViewError
from genevolve.registry import ConfigError
from genevolve.sft_rows import SFTRowError

SUFFIXES = (".jsonl", ".parquet")


@dataclass
class SFTExample:
    """One usable row: its id, the row and its image root, and its token view (pixels dropped)."""

    id: str
    row: dict[str, Any]
    root: Path
    view: TokenView
    system: str | None = None

    @property
    def has_images(self) -> bool:
        return bool(self.row.get("images"))


def data_files(paths: list[str]) -> list[Path]:
    """Every SFT row file named by ``paths`` (files, or folders searched recursively, ``images/`` skipped)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            if path.suffix not in SUFFIXES:
                raise ConfigError(f"SFT data file {path}: expected {' or '.join(SUFFIXES)}")
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                           and "images" not in p.relative_to(path).parts[:-1] and not p.name.startswith("."))
            if not found:
                raise ConfigError(f"SFT data folder {path} holds no {' or '.join(SUFFIXES)} files")
            files.extend(found)
        else:
            raise ConfigError(f"SFT data {path} does not exist")
    return files


def read_rows(file: Path) -> list[tuple[str, Any]]:
    """``[(id, row)]``; a line that is not JSON becomes a ``ValueError`` in place of its row."""
    if file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise ConfigError(f"{file}: reading parquet needs pyarrow: pip install 'genevolve[bench]'") from None
        return [(str(r.get("id") or f"{file.stem}:{n}"), r) for n, r in enumerate(pq.read_table(file).to_pylist())]
    rows: list[tuple[str, Any]] = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((f"{file.stem}:{n}", ValueError(f"not valid JSON ({exc.msg})")))
            continue
        rows.append((str(row.get("id") or f"{file.stem}:{n}") if isinstance(row, dict) else f"{file.stem}:{n}", row))
    return rows


def load_examples(paths: list[str], encoder: ChatEncoder, max_tokens: int, *,
                  skip_failed: bool = True, system: str | None = None) -> tuple[list[SFTExample], list[dict]]:
    """Usable examples and ``[{"id", "file", "reason"}]`` for the skipped rows. With ``skip_failed``,
    rows marked ``"ok": false`` (the world's expert rollouts that ended without a valid program) are
    skipped: they would teach the failure. ``system`` replaces every row's system message."""
    examples: list[SFTExample] = []
    skipped: list[dict[str, str]] = []
    for file in data_files(paths):
        for row_id, row in read_rows(file):
            try:
                if isinstance(row, Exception):
                    raise row
                if not isinstance(row, dict):
                    raise SFTRowError(f"expected a JSON object, got {type(row).__name__}")
                if skip_failed and row.get("ok") is False:
                    skipped.append({"id": row_id, "file": str(file), "reason": "not_ok: the row is marked as a failed rollout"})
                    continue
                view = encoder.view_sft_row(row, root=file.parent, system=system)
            except (SFTRowError, TokenViewError, ValueError, FileNotFoundError) as exc:
                skipped.append({"id": row_id, "file": str(file), "reason": f"{type(exc).__name__}: {exc}"})
                continue
            if len(view) > max_tokens:
                skipped.append({"id": row_id, "file": str(file), "reason": f"too_long: {len(view)} > {max_tokens} tokens"})
                continue
            if view.n_assistant_tokens == 0:
                skipped.append({"id": row_id, "file": str(file), "reason": "no assistant tokens"})
                continue
            view.extra = {}  # pixels are rebuilt per step: holding every image tensor would not fit
            examples.append(SFTExample(row_id, row, file.parent, view, system))
    return examples, skipped


def split(examples: list[SFTExample], eval_frac: float, seed: int) -> tuple[list[SFTExample], list[SFTExample]]:
    """A seeded held-out split: ``ceil(eval_frac · n)`` rows for eval (none when eval_frac is 0),
    always leaving at least one row to train on."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(math.ceil(eval_frac * len(examples)), len(examples) - 1) if eval_frac > 0 else 0
    held = set(order[:n_eval])
    return ([e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)])


def micro_batches(n_train: int, batch_size: int, epochs: float, seed: int) -> list[list[int]]:
    """Every micro-batch of the run, in order: a fresh seeded shuffle each epoch, the last epoch cut
    short for fractional ``epochs``. A pure function of its arguments, so a resumed run sees
    exactly the batches it would have seen."""
    batches: list[list[int]] = []
    total = math.ceil(epochs * n_train)
    epoch = 0
    while total > 0:
        order = list(range(n_train))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        order = order[:total]
        batches.extend(order[i:i + batch_size] for i in range(0, len(order), batch_size))
        total -= len(order)
        epoch += 1
    return batches

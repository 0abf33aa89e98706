"""The run folder: what every long command (``sft``, ``evolve``, ``bench``) keeps on disk, and how it resumes.

::

    OUT/config.yaml                  the resolved config; a resumed run must match it (``check_config``)
    OUT/*.jsonl                      append-only logs, one fsynced JSON record a line (``JsonlLog``)
    OUT/checkpoints/step-NNNNNN/     state.pt (the trainer's state, its step, the RNG states) and model/

Resume, the same for every command: load the newest checkpoint (``latest_checkpoint``, ``load_checkpoint``,
which also restores the RNG states), cut every step-tagged log back to that checkpoint's step
(``JsonlLog.keep_steps``) and go on from the next step. A kill at any moment leaves at most a torn last line
(cut off on the next read) and a hidden ``.tmp-step-*`` folder (never loaded); anything written after the
checkpoint is redone, and a redone step writes what the lost one would have.

A checkpoint's step is the step label of the last record it covers: SFT's steps done (1, 2, ...), evolve's
step index (0, 1, ...). The learning-rate schedule lives here too (``lr_schedule``), one for SFT and RL.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from genevolve.registry import ConfigError
from genevolve.types import write_text_atomic

CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
STATE = "state.pt"
#: (folder name, state file, the file whose presence makes it complete); after today's layout, those written
#: before this module, which still load: SFT's ``step-N/trainer.pt``, evolve's ``step_N/learner.pt`` + marker
_LAYOUTS = ((r"step-(\d+)", STATE, STATE), (r"step-(\d+)", "trainer.pt", "trainer.pt"),
            (r"step_(\d+)", "learner.pt", "complete.json"))


class RunFolderError(ValueError):
    """The run folder's files are not what this command expects."""


# -- append-only JSONL ---------------------------------------------------------------------------------------


class JsonlLog:
    """An append-only JSONL file: one JSON object a line, each written, flushed and fsynced before
    ``append`` returns, so a killed process leaves at most one torn last line. Reading cuts that line off
    (the next append then starts on a clean line); a bad line anywhere else is corruption and raises."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any] | str) -> None:
        """Write one record (a mapping, or its JSON text) durably."""
        line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every record in order (a missing file has none)."""
        return [record for _, record in self._scan()]

    def keep_steps(self, last: int, step_of: Callable[[dict[str, Any]], int] = lambda r: r["step"]) -> int:
        """Keep the records whose step is at most ``last`` (a resumed run redoes the later ones); returns how
        many were removed. ``step_of`` reads a record's step."""
        lines = self._scan()
        kept = [raw for raw, record in lines if step_of(record) <= last]
        if len(kept) != len(lines):
            write_text_atomic(self.path, "".join(raw + "\n" for raw in kept))
        return len(lines) - len(kept)

    def _scan(self) -> list[tuple[str, dict[str, Any]]]:
        """(line, record) pairs; a torn last line (no newline after it, or not a JSON object) is cut off the file."""
        if not self.path.is_file():
            return []
        lines = self.path.read_bytes().split(b"\n")  # the piece after the last newline is b"" when none is torn
        last = max((n for n, raw in enumerate(lines) if raw.strip()), default=-1)  # the last line with content
        out, end = [], 0
        for n, raw in enumerate(lines):
            if raw.strip():
                record = _record(raw) if n < len(lines) - 1 else None
                if record is None:
                    if n < last:
                        raise RunFolderError(f"{self.path}:{n + 1}: not a JSON record; the file is corrupt "
                                             "(only a torn last line is repaired)")
                    self._truncate(end)
                    break
                out.append((raw.decode("utf-8"), record))
            end += len(raw) + 1
        return out

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


# -- checkpoints -----------------------------------------------------------------------------------------------


def save_checkpoint(out: Path, step: int, state: dict[str, Any], *, keep: int,
                    write_model: Callable[[Path], Any] | None = None, main: bool = True) -> Path:
    """Write ``checkpoints/step-NNNNNN/``: ``write_model(folder / "model")``, then ``state.pt`` holding ``state``,
    ``step`` and the RNG states (python, torch, CUDA when present). Everything goes into a hidden folder that
    is renamed into place last, so a checkpoint folder is always complete. The newest ``keep`` are kept.

    Several processes: the caller gathers ``state`` on every process as its sharding needs; every process then
    calls this (``write_model`` gathers a sharded model) and only ``main`` writes."""
    import torch

    folder = Path(out) / CHECKPOINTS / f"step-{step:06d}"
    tmp = folder.with_name(f".tmp-{folder.name}")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if write_model is not None:
        write_model(tmp / "model")
    if not main:
        return folder
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / STATE)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    for old in _checkpoints(Path(out))[:-keep]:
        shutil.rmtree(old)
    return folder


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = _checkpoints(Path(out))
    return found[-1] if found else None


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder covers (the records up to it are kept on resume)."""
    step = _layout(folder)[0]
    if step is None:
        raise RunFolderError(f"{folder} is not a complete checkpoint")
    return step


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """A checkpoint's state (memory-mapped: processes loading it share the pages), with the RNG states restored."""
    import torch

    path = _layout(folder)[1]
    if path is None:
        raise RunFolderError(f"{folder} is not a complete checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if "rng" not in state:  # evolve's older layout
        state["rng"] = {"python": state.pop("python_rng"), "torch": state.pop("torch_rng")}
    restore_rng(state["rng"])
    return state


def rng_state() -> dict[str, Any]:
    import torch

    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (a hidden ``.tmp-`` folder is a save cut short)."""
    folder = out / CHECKPOINTS
    found = [(step, path) for path in (folder.iterdir() if folder.is_dir() else [])
             for step, _ in [_layout(path)] if step is not None]
    return [path for _, path in sorted(found)]


def _layout(folder: Path) -> tuple[int | None, Path | None]:
    """A complete checkpoint folder's step and state file; (None, None) for anything else."""
    for pattern, state, marker in _LAYOUTS:
        match = re.fullmatch(pattern, folder.name)
        if match and (folder / marker).is_file():
            return int(match.group(1)), folder / state
    return None, None


# -- the config snapshot ---------------------------------------------------------------------------------------


def save_config(out: Path, config: dict[str, Any], name: str = CONFIG) -> Path:
    """Write the resolved config as ``OUT/config.yaml`` (a plain mapping, as ``model_dump(mode="json")`` gives)."""
    path = Path(out) / name
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path


def read_config(path: Path, normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """A saved config; ``normalise`` brings one written by an older version to today's form (fields added since
    get their defaults). Where it fails the snapshot is returned as written, so the keys that differ get named."""
    saved = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if normalise is not None:
        try:
            return normalise(saved)
        except ValueError:
            pass
    return saved


def check_config(path: Path, config: dict[str, Any], *, command: str, resumable: Sequence[str] = (),
                 only: Sequence[str] | None = None, normalise: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 hint: str = "") -> None:
    """Refuse to resume a run under ``config`` when it differs from the snapshot ``path`` (if there is one).

    ``resumable``: dotted keys (and the keys under them) that may change because they cannot change the
    result; ``only``: compare just these keys (and those under them). The ``ConfigError`` names each changed
    key with its old and new value; ``hint`` says how to start over instead."""
    path = Path(path)
    if not path.is_file():
        return
    changed = config_changes(read_config(path, normalise), config, resumable, only)
    if changed:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(changed.items())[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        allowed = f" Only {', '.join(resumable)} may change on resume." if resumable else ""
        raise ConfigError(f"{path.parent} holds a {command} run made with another config, and resuming it would "
                          f"mix the two. Changed: {listed}{more}.{allowed} Rerun with the config in {path}, or "
                          f"start over{': ' + hint if hint else ''}.")


_MISSING = "<unset>"


def config_changes(old: dict[str, Any], new: dict[str, Any], resumable: Sequence[str] = (),
                   only: Sequence[str] | None = None) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every leaf that differs, leaving out the ``resumable`` keys and, with
    ``only``, every key but those (a key covers the keys under it)."""
    a, b = _flat(old), _flat(new)
    changed = {}
    for key in sorted(a.keys() | b.keys()):
        if (a.get(key, _MISSING) != b.get(key, _MISSING) and not _under(key, resumable)
                and (only is None or _under(key, only))):
            changed[key] = (a.get(key, _MISSING), b.get(key, _MISSING))
    return changed


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") for p in prefixes)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


# -- the learning-rate schedule ----------------------------------------------------------------------------------


def cosine_with_warmup(total: int, warmup: int, min_frac: float) -> Callable[[int], float]:
    """LR factor per update: ``warmup`` updates rising linearly (1/(w+1), ..., w/(w+1): none wasted at 0, none
    already at the peak), then a cosine from 1 down to ``min_frac`` at update ``total`` (held there after)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def lr_schedule(optimizer: Any, total: int, warmup_frac: float, min_frac: float) -> Any:
    """A ``LambdaLR`` over ``total`` updates with ``ceil(warmup_frac * total)`` warm-up updates
    (``cosine_with_warmup``); step it once per optimizer update."""
    import torch

    factor = cosine_with_warmup(total, math.ceil(warmup_frac * total), min_frac)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""A benchmark run folder's logs and config, on ``genevolve.runfolder``.

Each stage appends to its own ``runfolder.JsonlLog`` (one fsynced record a line; a torn last line is cut off
on reading), indexed here by item id: a rerun skips every id already logged.

``config.yaml`` is the resolved config of the run; a stage run alone with a config whose keys for that
stage differ (``STAGE_KEYS``: the render stage on another machine with its own renderer) keeps its config
beside it as ``config.<stage>.yaml``. Resuming a stage whose log already holds records under a config that
changes that stage's keys is refused (``save_stage_config``): its records would mix two setups.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genevolve import runfolder
from genevolve.runfolder import RunFolderError  # noqa: F401  (raised by the stages; the CLI catches it from here)

#: the config keys that the render and judge stages' records depend on (the render seed is the sampling
#: seed); the agent stage's records depend on every other key
STAGE_KEYS = {"render": ("renderer", "agent.sampling.seed"), "judge": ("judge",)}


class JsonlLog(runfolder.JsonlLog):
    """A stage's log: its records by item id (the latest per id wins)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.records: dict[str, dict[str, Any]] = {}

    def load(self) -> JsonlLog:
        """Read every record (repairing a torn last line)."""
        for record in self.read():
            if "id" not in record:
                raise RunFolderError(f"{self.path}: a record without an id: {str(record)[:200]}")
            self.records[str(record["id"])] = record
        return self

    def append(self, record: dict[str, Any]) -> None:  # type: ignore[override]
        """Write one record durably before returning (the caller relies on it surviving a kill)."""
        super().append(record)
        self.records[str(record["id"])] = record

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.records

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self.records.get(item_id)


def stage_keys(stage: str, config: dict[str, Any]) -> list[str]:
    """The keys of ``config`` that ``stage``'s records depend on."""
    if stage in STAGE_KEYS:
        return list(STAGE_KEYS[stage])
    return [key for key in config if key not in ("renderer", "judge")]


def save_stage_config(out: Path, config: dict[str, Any], stages: Sequence[str]) -> list[Path]:
    """Refuse ``config`` for a stage whose log holds records made under other values of its keys (a
    ConfigError names them), then save it: as ``config.yaml`` while the run has no record, else as
    ``config.<stage>.yaml`` for each stage run whose keys differ from config.yaml's. Returns those side files."""
    from genevolve.bench.runner import LOGS
    from genevolve.config import RunConfig

    def normalise(saved: dict[str, Any]) -> dict[str, Any]:
        return RunConfig.model_validate(saved).model_dump(mode="json")

    out = Path(out)
    main = out / runfolder.CONFIG
    started = {stage for stage, name in LOGS.items() if JsonlLog(out / name).read()}
    for stage in started.intersection(stages):
        side = out / f"config.{stage}.yaml"
        runfolder.check_config(side if side.is_file() else main, config, command=f"benchmark ({stage} stage)",
                               only=stage_keys(stage, config), normalise=normalise, hint="choose another --out")
    if not started or not main.is_file():
        for stage in LOGS:
            (out / f"config.{stage}.yaml").unlink(missing_ok=True)
        runfolder.save_config(out, config)
        return []
    saved, written = runfolder.read_config(main, normalise), []
    for stage in stages:
        side = out / f"config.{stage}.yaml"
        if runfolder.config_changes(saved, config, only=stage_keys(stage, config)):
            written.append(runfolder.save_config(out, config, side.name))
        else:
            side.unlink(missing_ok=True)
    return written

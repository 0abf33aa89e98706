"""Run a ``genevolve`` command that SIGKILLs itself at a chosen point, for the kill-and-resume tests:
``run_killed("save 2", "sft", "--config", path)`` runs ``python -m tests.sigkill save 2 -- sft --config PATH``
in a subprocess.

``WHEN N``: ``fsync N``: at the Nth fsync (each log line is fsynced), after cutting the line just written
short, as a kill in the middle of a write leaves it; ``save N``: right after the Nth ``torch.save``, inside
a checkpoint that is not complete yet. Only the test harness patches these; the command runs unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_killed(kill_at: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``genevolve ARGS`` in a subprocess that kills itself at ``kill_at`` (``"fsync N"`` or ``"save N"``)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "tests.sigkill", *kill_at.split(), "--", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _kill_at(n: int, action=None):
    count = 0

    def hit(*args):
        nonlocal count
        count += 1
        if count == n:
            if action is not None:
                action(*args)
            os.kill(os.getpid(), signal.SIGKILL)

    return hit


def main() -> None:
    when, n, sep, *args = sys.argv[1:]
    assert sep == "--", __doc__
    if when == "fsync":
        real_fsync = os.fsync
        tear = _kill_at(int(n), lambda fd: os.ftruncate(fd, os.fstat(fd).st_size - 3))

        def fsync(fd):
            real_fsync(fd)
            tear(fd)

        os.fsync = fsync
    elif when == "save":
        import torch

        real_save, after = torch.save, _kill_at(int(n))

        def save(*a, **kw):
            real_save(*a, **kw)
            after()

        torch.save = save
    else:
        raise SystemExit(__doc__)
    from genevolve.cli import app

    sys.argv = ["genevolve", *args]
    app()


if __name__ == "__main__":
    main()

"""One training run per run directory: an exclusive lock held by the main process for the whole run.

The lock is ``filelock.FileLock`` on ``<run>/.lock`` (``fcntl.flock`` on POSIX, as huggingface_hub locks its cache):
the kernel releases it when the process ends, even by SIGKILL, so a crashed run never leaves the directory locked.
``<run>/.lock.json`` names the holder (PID, host, start time) for the refusal message.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from ipt.core.files import atomic_write_text

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.json"


class RunDirInUse(ValueError):
    """Another process holds the run directory's lock; ``str()`` names it."""


class RunLock:
    """``with RunLock(run_dir):`` holds the directory's lock or raises :class:`RunDirInUse` at once (no waiting)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = FileLock(str(self.run_dir / LOCK_NAME), timeout=0)
        self._created = False

    def holder(self) -> str:
        try:
            info = json.loads((self.run_dir / HOLDER_NAME).read_text())
            return f"PID {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError):
            return "PID unknown"

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> RunLock:
        self._created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunDirInUse(
                f"--output-dir {self.run_dir} is in use by another training run ({self.holder()}); wait for it to "
                "end or choose another --output-dir"
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        atomic_write_text(self.run_dir / HOLDER_NAME, json.dumps(holder) + "\n")
        return self

    def release(self) -> None:
        if not self.held:
            return
        (self.run_dir / HOLDER_NAME).unlink(missing_ok=True)
        self._lock.release()
        if self._created and {p.name for p in self.run_dir.iterdir()} <= {LOCK_NAME}:
            # a run that failed before writing anything leaves no empty run directory behind
            (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
            self.run_dir.rmdir()

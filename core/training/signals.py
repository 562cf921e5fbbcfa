"""Stop requests at a step boundary: SIGTERM (what SLURM, Kubernetes and spot instances send before a kill),
SIGUSR1 (SLURM's ``--signal`` warning) and Ctrl-C (SIGINT) set a flag; the training loop saves a checkpoint and ends.

A second Ctrl-C interrupts at once (KeyboardInterrupt), for a user who does not want to wait for the save.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignals:
    """``with StopSignals() as s:`` installs the handlers (main thread only) and restores the old ones on exit;
    ``s.received`` is the first signal number that arrived, or None."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave stop signals to the main process, which saves and ends."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)

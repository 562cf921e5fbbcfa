"""Why a training run ended early; the ``ipt train`` command turns each into one line and an exit code."""

from __future__ import annotations

import signal
from pathlib import Path


class TrainingError(RuntimeError):
    """A run that cannot continue; ``str()`` is one user-facing line."""


class TrainingStopped(TrainingError):
    """Training stopped on purpose (too many non-finite losses); the message names the checkpoint to resume."""


class CheckpointWriteError(TrainingError):
    """A checkpoint could not be written (disk full, permissions); no partial folder is left behind."""


class TrainingInterrupted(TrainingError):
    """SIGTERM, SIGUSR1 or Ctrl-C arrived: a checkpoint was saved at the step boundary and the run ended.

    ``exit_code`` is the shell convention 128 + signal number (143 for SIGTERM, 130 for Ctrl-C).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} at step {step}; checkpoint saved to {checkpoint}; continue with --resume"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

"""``ipt train`` (and ``python core/train.py`` / ``accelerate launch core/train.py``): flags from
:class:`~ipt.core.training.config.TrainConfig`, the run itself in :mod:`ipt.core.training.run`.

Under a launcher (``accelerate launch``, ``torchrun``) only rank 0 prints an error line; the other ranks fail
quietly with the same exit code, so the reason is not repeated N times. Rank 0 also writes the line to torchrun's
error file (``TORCHELASTIC_ERROR_FILE``), so the launcher's closing failure summary ("Root Cause") repeats it at the
bottom of the screen instead of "To enable traceback see: ...".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
import time

from ipt.core.commands.options import add_model_arguments, parse_config
from ipt.core.files import check_not_inputs
from ipt.core.training.config import TrainConfig
from ipt.core.training.errors import TrainingError, TrainingInterrupted, TrainingStopped
from ipt.core.training.run import train

EXIT_STOPPED = 3  # non-finite losses
EXIT_FAILED = 1  # a checkpoint could not be written, or another rank failed


# -- command line --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ipt train`` (one per :class:`TrainConfig` field, plus ``--config``)."""
    parser.description = (
        "Pre-train IPT on several tasks, or fine-tune it (--init-from). Runs on one or many processes: "
        "accelerate launch core/train.py --tasks sr2,derain"
    )
    add_model_arguments(parser, TrainConfig)


def check_outputs(cfg: TrainConfig) -> None:
    """The run must not write into, replace or prune the model it fine-tunes from: ``--output-dir`` may not be
    the ``--init-from`` model or lie inside it, and its ``model/`` (replaced at the end) and ``checkpoints/``
    (pruned by ``--keep-last``) may not hold it. Raises :class:`~ipt.core.files.OverwriteError`."""
    if cfg.init_from is None:
        return
    run_dir = Path(cfg.output_dir)
    check_not_inputs([cfg.init_dir], "--output-dir", writes=[run_dir],
                     replaces=[run_dir / "model", run_dir / "checkpoints"],
                     hint="choose an --output-dir that does not hold the --init-from model")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _report_to_launcher(line: str) -> None:
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path and _rank() == 0:
        try:
            with open(path, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)
        except OSError:
            pass


def _fail(message: str, code: int) -> int:
    if _rank() == 0:
        print(f"ipt train: {message}", file=sys.stderr, flush=True)
        _report_to_launcher(f"ipt train: {message}")
    return code


def run(args: argparse.Namespace) -> int:
    cfg = parse_config(TrainConfig, args)
    check_outputs(cfg)
    try:
        train(cfg)
    except TrainingInterrupted as exc:
        return _fail(str(exc), exc.exit_code)
    except TrainingStopped as exc:
        return _fail(f"error: {exc}", EXIT_STOPPED)
    except TrainingError as exc:
        return _fail(f"error: {exc}", EXIT_FAILED)
    except (ValueError, OSError, ImportError) as exc:  # bad input: ipt.cli prints its one line on rank 0 only
        if _rank() != 0:
            return 2
        _report_to_launcher(f"ipt train: error: {' '.join(str(exc).split())}")
        raise
    return 0

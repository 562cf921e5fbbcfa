"""``ipt train`` (and ``python core/train.py`` / ``accelerate launch core/train.py``): flags from
:class:`~ipt.core.training.config.TrainConfig`, the run itself in :mod:`ipt.core.training.run`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ipt.core.commands.options import add_model_arguments, parse_config
from ipt.core.files import check_not_inputs
from ipt.core.training.config import TrainConfig
from ipt.core.training.run import train
from ipt.core.training.trainer import TrainingStopped

EXIT_STOPPED = 3


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
    check_not_inputs([cfg.init_from], "--output-dir", writes=[run_dir],
                     replaces=[run_dir / "model", run_dir / "checkpoints"],
                     hint="choose an --output-dir that does not hold the --init-from model")


def run(args: argparse.Namespace) -> int:
    cfg = parse_config(TrainConfig, args)
    check_outputs(cfg)
    try:
        train(cfg)
    except TrainingStopped as exc:
        print(f"ipt train: error: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


"""``ipt train`` (and ``python core/train.py`` / ``accelerate launch core/train.py``): flags from
:class:`~ipt.core.training.config.TrainConfig`, the run itself in :mod:`ipt.core.training.run`."""

from __future__ import annotations

import argparse
import sys

from ipt.core.commands.options import add_model_arguments, parse_config
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


def run(args: argparse.Namespace) -> int:
    cfg = parse_config(TrainConfig, args)
    try:
        train(cfg)
    except TrainingStopped as exc:
        print(f"ipt train: error: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


"""Launcher: ``python core/train.py ...`` and ``accelerate launch core/train.py ...`` run ``ipt train ...``.

The training code lives in :mod:`ipt.core.training` (``run.train``, ``trainer.Trainer``); this file only starts it.
Imported as ``ipt.core.train`` it re-exports those names for one release (``from ipt.core.train import train``).
"""

import os
import sys

if __name__ == "__main__":
    # Run as a script, Python put core/ first on sys.path: its folder names (model, data, ...) would shadow others.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    from ipt.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
else:
    from ipt.core.commands.train import EXIT_STOPPED, add_arguments, run  # noqa: F401
    from ipt.core.training.config import TrainConfig  # noqa: F401
    from ipt.core.training.run import init_model, train  # noqa: F401
    from ipt.core.training.trainer import Trainer, TrainingStopped  # noqa: F401

"""``ipt plot RUN_DIR``: loss and validation PSNR per task of a training run as a PNG (default RUN_DIR/training.png).

The reading and drawing live in :mod:`ipt.core.training.log_plot`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ipt.core.training.log_plot import LOG_NAME, plot_log, read_log


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, metavar="RUN_DIR", help=f"training run directory (or its {LOG_NAME})")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE.png",
                        help="image to write (default: RUN_DIR/training.png)")


def run(args: argparse.Namespace) -> int:
    series = read_log(args.run)
    run_dir = args.run if args.run.is_dir() else args.run.parent
    out = plot_log(series, args.output or run_dir / "training.png", title=run_dir.resolve().name)
    last = {t: pts[-1][1] for t, pts in series.psnr.items()}
    summary = ", ".join(f"{t} {v:.2f} dB" for t, v in last.items()) or "no validations"
    print(f"wrote {out} ({len(series.loss)} loss records; last validation PSNR: {summary})")
    return 0

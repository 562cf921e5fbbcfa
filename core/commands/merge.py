"""``ipt merge BASE DONOR -o OUT``: a multi-task model whose listed tasks come from a fine-tune on a frozen body.

The merging itself lives in :mod:`ipt.core.model.merge`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ipt.core.checkpoints.pretrained import read_config
from ipt.core.files import check_not_inputs
from ipt.core.model.ipt import IPT
from ipt.core.model.merge import merge_tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", type=Path, metavar="BASE", help="multi-task model directory")
    parser.add_argument("donor", type=Path, metavar="DONOR",
                        help="model directory fine-tuned from BASE with --freeze body")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="model directory to write")
    parser.add_argument("--tasks", default=None, metavar="A,B,...",
                        help="tasks to take from DONOR (default: all of its tasks)")


def run(args: argparse.Namespace) -> int:
    check_not_inputs([args.base, args.donor], "--output", replaces=[args.output])
    base, donor = IPT.from_pretrained(args.base), IPT.from_pretrained(args.donor)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    merged = merge_tasks(base, donor, tasks)
    records = {n: (read_config(d).model_extra or {}).get("training") for n, d in (("base", args.base),
                                                                                 ("donor", args.donor))}
    base.save_pretrained(args.output, training=records["base"], merged={
        "base": str(args.base), "donor": str(args.donor), "tasks": merged, "donor_training": records["donor"]})
    print(f"wrote {args.output}: {', '.join(base.task_names)} (from {args.donor}: {', '.join(merged)})")
    return 0

"""``ipt merge BASE DONOR -o OUT``: a multi-task model whose listed tasks come from a fine-tune on a frozen body.

The merging itself lives in :mod:`ipt.core.model.merge`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ipt.core.checkpoints.bundled import resolve_model_dir
from ipt.core.checkpoints.pretrained import read_config
from ipt.core.files import check_not_inputs
from ipt.core.model.ipt import IPT
from ipt.core.model.merge import merge_tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE",
                        help="multi-task model directory, Hub repo id (user/name[@revision]) or 'bundled'")
    parser.add_argument("donor", metavar="DONOR",
                        help="model directory (or Hub repo id) fine-tuned from BASE with --freeze body")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="model directory to write")
    parser.add_argument("--tasks", default=None, metavar="A,B,...",
                        help="tasks to take from DONOR (default: all of its tasks)")


def run(args: argparse.Namespace) -> int:
    base_dir, donor_dir = resolve_model_dir(args.base), resolve_model_dir(args.donor)
    check_not_inputs([base_dir, donor_dir], "--output", replaces=[args.output])
    base, donor = IPT.from_pretrained(base_dir), IPT.from_pretrained(donor_dir)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    merged = merge_tasks(base, donor, tasks)
    records = {n: (read_config(d).model_extra or {}).get("training") for n, d in (("base", base_dir),
                                                                                 ("donor", donor_dir))}
    base.save_pretrained(args.output, training=records["base"], merged={
        "base": str(args.base), "donor": str(args.donor), "tasks": merged, "donor_training": records["donor"]})
    print(f"wrote {args.output}: {', '.join(base.task_names)} (from {args.donor}: {', '.join(merged)})")
    return 0

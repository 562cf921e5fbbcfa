"""``ipt convert``: an official Pretrained-IPT ``.pt`` checkpoint -> a model directory (or ``--inspect``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ipt.core.checkpoints.official import (
    DEFAULT_NUM_HEADS,
    OFFICIAL_PRETRAIN_TASKS,
    ConversionError,
    OfficialLayout,
    convert_file,
    inspect_official,
    load_official_checkpoint,
    resolve_task_names,
)
from ipt.core.checkpoints.pretrained import read_config
from ipt.core.files import check_not_inputs

# -- CLI ------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, metavar="OFFICIAL.pt", help="official Pretrained-IPT checkpoint")
    parser.add_argument("out_dir", type=Path, nargs="?", metavar="OUT_DIR", help="model directory to write")
    parser.add_argument(
        "--tasks",
        type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
        default=None,
        help="task name of each head/tail index, comma-separated (default for a six-head checkpoint: "
        + ",".join(OFFICIAL_PRETRAIN_TASKS) + "; required otherwise)",
    )
    parser.add_argument(
        "--num-heads",
        type=int,
        default=DEFAULT_NUM_HEADS,
        help=f"attention heads (not stored in the checkpoint; official: {DEFAULT_NUM_HEADS})",
    )
    parser.add_argument("--key", default=None, metavar="KEY",
                        help="state dict to take from a wrapped checkpoint, e.g. params or params_ema (nested: "
                        "net/model); default: the EMA weights when the file has them (params_ema, state_dict_ema ...)")
    parser.add_argument("--inspect", action="store_true", help="print the inferred layout and write nothing")


def describe(layout: OfficialLayout, tasks: Sequence[str] | None, source: str) -> str:
    """The human-readable report of ``ipt convert --inspect``."""
    scales = ", ".join(str(s) for s in layout.tail_scales)
    shift = (
        f"official (rgb_range {layout.rgb_range:g})"
        if layout.official_mean_shift
        else f"custom mean {tuple(round(m, 6) for m in layout.rgb_mean)} (rgb_range {layout.rgb_range:g})"
    )
    try:
        names = resolve_task_names(layout, tasks, source)
        mapping = ", ".join(f"{i} -> {n} (x{s})" for i, (n, s) in enumerate(zip(names, layout.tail_scales)))
        if tasks is None:
            mapping += "  [official pre-training order]"
    except ConversionError as exc:
        mapping = f"none: {str(exc).removeprefix(source + ': ')}"
    rows = [
        ("n_feats", str(layout.n_feats)),
        ("patch_dim", f"{layout.patch_dim} (patch_size {layout.patch_size}, {layout.num_tokens} tokens "
                      f"of {layout.embed_dim} values)"),
        ("layers", f"{layout.num_enc_layers} encoder + {layout.num_dec_layers} decoder"),
        ("mlp_ratio", f"{layout.mlp_ratio:g}"),
        ("res_kernel", str(layout.res_kernel)),
        ("num_heads", f"{layout.num_heads} (assumed: not stored in a checkpoint; set with --num-heads)"),
        ("heads/tails", f"{layout.num_tasks} with scales {scales}"),
        ("queries", str(layout.num_queries)),
        ("mean shift", shift),
        ("parameters", f"{layout.num_parameters:,} ({layout.dtype})"),
        ("task mapping", mapping),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"official IPT checkpoint {source}"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def run(args: argparse.Namespace) -> int:
    if args.inspect:
        if args.out_dir is not None:
            raise ValueError("--inspect writes nothing: drop OUT_DIR (or drop --inspect to convert)")
        found = load_official_checkpoint(args.checkpoint, args.key)
        layout = inspect_official(found.state, args.num_heads, source=str(args.checkpoint))
        print(describe(layout, args.tasks, str(args.checkpoint)))
        print(f"  {'weights':<12}  {describe_key(found.key, found.others)}")
        return 0
    if args.out_dir is None:
        raise ValueError("OUT_DIR is required to convert (or pass --inspect to only print the layout)")
    # OUT_DIR is replaced as a whole: it may not be the checkpoint or a folder holding it.
    check_not_inputs([args.checkpoint], "OUT_DIR", replaces=[args.out_dir], hint="choose a new folder for the model")
    out = convert_file(args.checkpoint, args.out_dir, args.tasks, args.num_heads, key=args.key)

    saved = read_config(out)
    tasks = ", ".join(f"{t.name} (x{t.scale})" for t in saved.tasks)
    source = getattr(saved, "source", None) or {}
    print(f"wrote {out} (tasks: {tasks}; weights: {describe_key(source.get('key'), source.get('other_keys', ()))})")
    return 0


def describe_key(key: str | None, others: Sequence[str]) -> str:
    """Which state dict of the file was used, e.g. ``'params_ema' (also in the file: 'params'; choose with --key)``."""
    used = "the file's top-level state dict" if key is None else repr(key)
    if others:
        return f"{used} (also in the file: {', '.join(map(repr, others))}; choose with --key)"
    return used

"""``ipt export``: one task of a model directory as a file other tools load.

    ipt export MODEL_DIR --format official --task sr2 -o ipt_sr2.pth   # spandrel / chaiNNer / ComfyUI
    ipt export MODEL_DIR --format onnx --task sr2 -o ipt_sr2.onnx      # ONNX Runtime (48x48 tiles, any batch)

``official`` is the inverse of ``ipt convert`` (:func:`ipt.core.checkpoints.official.export_official`); a model
the official layout cannot express is refused with the reasons. ``onnx`` is
:func:`ipt.core.inference.onnx.export_onnx`. See ``docs/export.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ipt.core.checkpoints.bundled import resolve_model_dir
from ipt.core.checkpoints.official import export_official, save_official
from ipt.core.inference.onnx import DEFAULT_OPSET, export_onnx
from ipt.core.model.ipt import IPT

FORMATS = ("official", "onnx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR",
                        help="model directory, Hub repo id (user/name[@revision]) or 'bundled'")
    parser.add_argument("--format", choices=FORMATS, required=True,
                        help="official: Pretrained-IPT state dict (spandrel, chaiNNer, ComfyUI); onnx: ONNX tile model")
    parser.add_argument("--task", default=None, help="task to export (one per file; default: the model's only task)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="FILE",
                        help="file to write (official: .pth/.pt, or .safetensors; onnx: .onnx)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")


def _task(model: IPT, task: str | None, source: str) -> str:
    if task is not None:
        model._check_task(task)
        return task
    if len(model.task_names) != 1:
        raise ValueError(f"{source} has tasks {', '.join(model.task_names)}: choose one with --task (one per file)")
    return model.task_names[0]


def run(args: argparse.Namespace) -> int:
    if args.output.is_dir():
        raise ValueError(f"{args.output}: -o is a folder; give a file name")
    if args.opset is not None and args.format != "onnx":
        raise ValueError("--opset applies to --format onnx only")
    directory = resolve_model_dir(args.model)
    model = IPT.from_pretrained(directory).eval()
    task = _task(model, args.task, str(args.model))
    if args.format == "official":
        path = save_official(export_official(model, task), args.output)
        print(f"wrote {path} (task {task}, x{model.scale(task)}, official Pretrained-IPT layout; "
              "spandrel/chaiNNer/ComfyUI load it as IPT)")
        return 0
    path = export_onnx(model, task, args.output, opset=args.opset or DEFAULT_OPSET)
    size = model.config.patch_size
    print(f"wrote {path} (task {task}, x{model.scale(task)}, input 'tiles' (batch, 3, {size}, {size}) on 0-255; "
          f"run it with: ipt restore --backend onnx --model {path} --task {task} ...)")
    return 0

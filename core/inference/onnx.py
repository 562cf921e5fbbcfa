"""IPT tile models as ONNX files, and ONNX Runtime as the tile function of the tiled restore pipeline.

``ipt export --format onnx`` writes the network of ONE task for a fixed ``patch_size`` tile (48x48 for the paper's
layout) with a dynamic batch: input ``tiles`` ``(B, 3, T, T)`` float32 on 0-``rgb_range``, output ``restored``
``(B, 3, T*s, T*s)``. Whole images go through the same tiling as ``ipt restore`` (:class:`TaskRestorer` with an
:class:`OnnxTileFunction`), so ``ipt restore --backend onnx`` differs from the PyTorch path only in the network
runtime. The file carries its task, scale and tile size in the ONNX metadata (``metadata_props``).

Exported with PyTorch's exporter (``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``); run with
``onnxruntime``. Both are the optional extra ``pip install 'ipt-framework[onnx]'``, imported only here.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ipt.core.files import atomic_write_file
from ipt.core.inference.restorer import InferenceOptions, TaskRestorer
from ipt.core.model.fused_linear import onednn_paths

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.model.ipt import IPT

INPUT_NAME = "tiles"
OUTPUT_NAME = "restored"
DEFAULT_OPSET = 18
_EXTRA = "pip install 'ipt-framework[onnx]' (onnx, onnxruntime, onnxscript)"


class OnnxError(ValueError):
    """An ONNX file that is not an IPT tile model of this package, or a task it does not have."""


class _TileModel(nn.Module):
    """``tiles -> model(tiles, task)``: the single-input module the exporter traces."""

    def __init__(self, model: "IPT", task: str) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, tiles: Tensor) -> Tensor:
        return self.model(tiles, self.task)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"ONNX export/inference needs {module}: {_EXTRA} ({exc})") from exc


def export_onnx(model: "IPT", task: str, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write task ``task`` of ``model`` as an ONNX tile model at ``path`` (atomically; one file, weights inside).

    The graph is traced on the CPU in float32 with the plain PyTorch linear path (the oneDNN fast paths are
    private ops the exporter does not know). Raises ``ImportError`` without the ``[onnx]`` extra.
    """
    _require("onnxscript")
    onnx = _require("onnx")
    model._check_task(task)
    ref = next(model.parameters())
    if ref.device.type != "cpu" or ref.dtype != torch.float32:
        model = copy.deepcopy(model).float().cpu()
    model.eval()
    size = model.config.patch_size
    example = torch.rand(2, 3, size, size) * model.config.rgb_range
    batch = torch.export.Dim("batch", min=1, max=4096)
    metadata = {"ipt_task": task, "ipt_scale": str(model.scale(task)), "ipt_tile": str(size),
                "ipt_rgb_range": f"{model.config.rgb_range:g}", "ipt_format": "ipt-tile-model/1"}

    def write(tmp: Path) -> None:
        with onednn_paths(inference=False, training=False), torch.no_grad(), _quiet():
            torch.onnx.export(
                _TileModel(model, task).eval(), (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamo=True, dynamic_shapes={"tiles": {0: batch}}, external_data=False,
                verbose=False,
            )
        proto = onnx.load(str(tmp))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))

    return atomic_write_file(Path(path), write)


class _quiet:
    """Silence the exporter's progress lines on stdout (file descriptor 1, written from C++ and Python)."""

    def __enter__(self) -> None:
        import sys

        sys.stdout.flush()
        self._saved = os.dup(1)
        self._sink = tempfile.TemporaryFile()
        os.dup2(self._sink.fileno(), 1)

    def __exit__(self, *exc: object) -> None:
        import sys

        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        self._sink.close()


class OnnxTileFunction:
    """An ONNX Runtime session as a tile function ``(B, 3, T, T) -> (B, 3, T*s, T*s)`` (torch tensors, any device;
    computed on the CPU in float32). ``task``, ``scale`` and ``tile`` come from the file's metadata.

    Raises :class:`OnnxError` for a file without the metadata :func:`export_onnx` writes, ``FileNotFoundError``
    for a missing one, ``ImportError`` without ``onnxruntime``.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
            raise OnnxError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ("ipt_task", "ipt_scale", "ipt_tile") if k not in meta]
        if missing:
            raise OnnxError(f"{path}: not an IPT tile model written by 'ipt export --format onnx' (no {missing[0]})")
        self.path, self.task = path, meta["ipt_task"]
        self.scale, self.tile = int(meta["ipt_scale"]), int(meta["ipt_tile"])

    def __call__(self, tiles: Tensor) -> Tensor:
        x = tiles.detach().to("cpu", torch.float32).contiguous().numpy()
        (y,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return torch.from_numpy(y).to(tiles.device)


def onnx_restorer(path: str | Path, task: str | None, options: "InferenceOptions | None" = None) -> "TaskRestorer":
    """A :class:`TaskRestorer` running the ONNX tile model at ``path`` (``task``: None or the file's task).

    ONNX Runtime runs here on the CPU in float32: ``--device cuda`` or ``--dtype bf16/fp16`` are refused.
    """
    options = options or InferenceOptions()
    fn = OnnxTileFunction(path)
    if task is not None and task != fn.task:
        raise OnnxError(f"{path}: the ONNX file holds task {fn.task!r}, not {task!r} (one task per file)")
    if options.device == "cuda" or options.dtype != "fp32":
        raise ValueError("--backend onnx runs ONNX Runtime on the CPU in fp32: drop --device cuda / --dtype")
    return TaskRestorer(fn, fn.task, options.model_copy(update={"device": "cpu"}), scale=fn.scale, tile=fn.tile)

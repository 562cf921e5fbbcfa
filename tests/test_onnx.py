"""``ipt export --format onnx`` and ``ipt restore --backend onnx``: the tile model in ONNX Runtime computes our
function (max diff <= 1e-3 on 0-255, fp32), for any batch, and runs the same tiled pipeline end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ipt.cli import main
from ipt.core.images.io import read_image, write_image
from ipt.core.inference.restorer import InferenceOptions, TaskRestorer
from ipt.core.inference.tiling import count_tiles
from ipt.core.model import IPT, preset

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("onnx")

from ipt.core.inference.onnx import OnnxError, OnnxTileFunction, export_onnx, onnx_restorer  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[IPT, Path, Path]:
    """A tiny two-task model directory and its sr2 task exported through the CLI (one export: ~10 s)."""
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["sr2", "denoise30"]).eval()
    root = tmp_path_factory.mktemp("onnx")
    model_dir = model.save_pretrained(root / "model")
    onnx_path = root / "sr2.onnx"
    assert main(["export", str(model_dir), "--format", "onnx", "--task", "sr2", "-o", str(onnx_path)]) == 0
    return model, model_dir, onnx_path


def test_onnx_runtime_matches_pytorch_for_any_batch(exported: tuple[IPT, Path, Path]) -> None:
    model, _, path = exported
    fn = OnnxTileFunction(path)
    assert (fn.task, fn.scale, fn.tile) == ("sr2", 2, 48)
    for batch in (1, 3, 7):  # exported with batch 2: the batch axis is dynamic
        x = torch.rand(batch, 3, 48, 48, generator=torch.Generator().manual_seed(batch)) * 255
        with torch.no_grad():
            ref = model(x, "sr2")
        y = fn(x)
        assert y.shape == ref.shape == (batch, 3, 96, 96)
        assert (y - ref).abs().max().item() <= 1e-3


def test_restore_backend_onnx_end_to_end(exported: tuple[IPT, Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    model, model_dir, path = exported
    image = torch.rand(3, 61, 90, generator=torch.Generator().manual_seed(5)) * 255
    write_image(tmp_path / "in.png", image)
    args = ["restore", str(tmp_path / "in.png"), "--task", "sr2", "--quiet"]
    assert main([*args, "--backend", "onnx", "--model", str(path), "-o", str(tmp_path / "onnx")]) == 0
    assert main([*args, "--model", str(model_dir), "-o", str(tmp_path / "torch")]) == 0
    out = capsys.readouterr().out
    assert count_tiles(61, 90) == 6 and out.count("(6 tiles") == 2  # both ran the paper protocol's 2x3 tiles
    a, b = (read_image(tmp_path / d / "in.png").rgb for d in ("onnx", "torch"))
    assert a.shape == (3, 122, 180)
    # 8-bit outputs of two fp32 runtimes: equal, or one level apart where a value sits on a rounding boundary.
    assert (a - b).abs().max().item() <= 1 and (a != b).float().mean().item() < 1e-3
    # the whole-image float outputs agree to the tile tolerance
    onnx_out = onnx_restorer(path, "sr2", InferenceOptions(device="cpu"))(read_image(tmp_path / "in.png").rgb)
    torch_out = TaskRestorer(model, "sr2", InferenceOptions(device="cpu"))(read_image(tmp_path / "in.png").rgb)
    assert (onnx_out - torch_out).abs().max().item() <= 1e-3


def test_wrong_task_or_file_is_one_line(exported: tuple[IPT, Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    _, model_dir, path = exported
    write_image(tmp_path / "in.png", torch.zeros(3, 8, 8))
    base = ["restore", str(tmp_path / "in.png"), "-o", str(tmp_path / "o"), "--backend", "onnx"]
    assert main([*base, "--task", "denoise30", "--model", str(path)]) == 2
    assert "holds task 'sr2', not 'denoise30'" in capsys.readouterr().err
    assert main([*base, "--task", "sr2", "--model", str(model_dir / "config.json")]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    assert main([*base, "--task", "sr2", "--model", str(path), "--dtype", "bf16"]) == 2
    assert "fp32" in capsys.readouterr().err
    with pytest.raises(OnnxError, match="not an IPT tile model"):
        _foreign_onnx(tmp_path / "plain.onnx")


def _foreign_onnx(path: Path) -> None:
    """An ONNX file without our metadata (an identity graph written with the onnx helpers)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    OnnxTileFunction(path)


@pytest.mark.slow  # a second export: ~10-25 s
def test_export_keeps_the_model_usable(exported: tuple[IPT, Path, Path], tmp_path: Path) -> None:
    """Exporting switches the oneDNN paths off only while tracing; the model object is left as it was."""
    model, _, _ = exported
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, "denoise30", tmp_path / "d.onnx")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(1, 3, 48, 48) * 255
    with torch.no_grad():
        assert np.allclose(OnnxTileFunction(tmp_path / "d.onnx")(x).numpy(), model(x, "denoise30").numpy(),
                           atol=1e-3, rtol=0)

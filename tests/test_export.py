"""``ipt export --format official``: spandrel (what chaiNNer and ComfyUI use) loads the file as IPT and computes our
function; models the official layout cannot express are refused with the reason; convert(export(m)) == m."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from ipt.cli import main
from ipt.core.checkpoints.official import (
    ExportError,
    convert_official,
    export_official,
    read_official_checkpoint,
    save_official,
)
from ipt.core.inference.restorer import InferenceOptions, TaskRestorer
from ipt.core.model import IPT, preset

spandrel = pytest.importorskip("spandrel")
TASKS = ["sr2", "sr3", "denoise30"]


@pytest.fixture(scope="module")
def model12() -> IPT:
    """A tiny model with the 12 attention heads spandrel assumes (random weights)."""
    torch.manual_seed(0)
    return IPT(preset("tiny", num_heads=12), TASKS).eval()


def _spandrel_load(path: Path):  # noqa: ANN202
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spandrel first tries a .pt as TorchScript (a deprecation warning)
        return spandrel.ModelLoader().load_from_file(str(path)).eval()


@pytest.mark.parametrize(("task", "suffix"), [("sr2", ".pth"), ("sr3", ".pt"), ("denoise30", ".safetensors")])
def test_spandrel_loads_the_export_as_ipt_with_our_outputs(model12: IPT, task: str, suffix: str,
                                                            tmp_path: Path) -> None:
    path = save_official(export_official(model12, task), tmp_path / f"ipt_{task}{suffix}")
    desc = _spandrel_load(path)
    assert desc.architecture.id == "IPT"
    assert desc.scale == model12.scale(task)
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 255  # official chop: batch 1
    with torch.no_grad():
        ours = model12(x, task).clamp(0, 255)  # spandrel clamps its output to [0, 1]
        theirs = desc(x / 255) * 255  # spandrel works on 0-1 images
    assert theirs.shape == ours.shape
    assert (ours - theirs).abs().max().item() <= 1e-3


def test_spandrel_whole_image_equals_our_official_protocol(model12: IPT, tmp_path: Path) -> None:
    """spandrel runs the official forward_chop on whole images; our ``--protocol official`` is the same stitching."""
    desc = _spandrel_load(save_official(export_official(model12, "sr2"), tmp_path / "sr2.pth"))
    image = torch.rand(3, 70, 61, generator=torch.Generator().manual_seed(2)) * 255
    ours = TaskRestorer(model12, "sr2", InferenceOptions(protocol="official", device="cpu"))(image)
    with torch.no_grad():
        theirs = desc(image[None] / 255)[0] * 255
    assert theirs.shape == ours.shape == (3, 140, 122)
    assert (ours - theirs).abs().max().item() <= 1e-3


@pytest.mark.parametrize("task", TASKS)
def test_convert_of_export_is_the_model_bit_for_bit(model12: IPT, task: str, tmp_path: Path) -> None:
    path = save_official(export_official(model12, task), tmp_path / "m.pth")
    back = convert_official(read_official_checkpoint(path), [task], num_heads=12)
    ours = {k: v for k, v in model12.state_dict().items() if k in back.state_dict()}
    assert back.state_dict().keys() == ours.keys()
    assert all(torch.equal(back.state_dict()[k], ours[k]) for k in ours)
    assert back.config == model12.config


@pytest.mark.parametrize(
    ("config", "tasks", "reason"),
    [
        (dict(), ["sr2"], "4 attention heads"),  # the tiny preset: 4 heads
        (dict(num_heads=12, num_dec_layers=1), ["sr2"], r"num_enc_layers \(2\) == num_dec_layers \(1\)"),
        (dict(num_heads=12, mlp_ratio=2.0), ["sr2"], "mlp_ratio 4"),
        (dict(num_heads=12, res_kernel=3), ["sr2"], "res_kernel 5"),
        (dict(num_heads=12, patch_size=30), ["sr2"], "patch_size 30 is not a multiple of 4"),
        (dict(num_heads=12, rgb_mean=(0.5, 0.5, 0.5)), ["sr2"], "DIV2K mean"),
        (dict(num_heads=12, rgb_range=1.5), ["sr2"], "integer range"),
    ],
)
def test_inexpressible_models_are_refused_with_the_reason(config: dict, tasks: list[str], reason: str) -> None:
    model = IPT(preset("tiny", **config), tasks)
    with pytest.raises(ExportError, match=reason):
        export_official(model, tasks[0])


def test_custom_head_is_refused(model12: IPT) -> None:
    from torch import nn

    from ipt.registry import get_task

    spec = get_task("sr2").model_copy(update={
        "name": "sr2wide", "build_head": lambda cfg: nn.Conv2d(3, cfg.n_feats, 5, padding=2),
    })
    model = IPT(model12.config, [spec])
    with pytest.raises(ExportError, match="task 'sr2wide' has a custom head"):
        export_official(model, "sr2wide")


def test_cli_export_official_and_refusal(model12: IPT, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = model12.save_pretrained(tmp_path / "m12")
    out = tmp_path / "ipt_sr3.pth"
    assert main(["export", str(d), "--format", "official", "--task", "sr3", "-o", str(out)]) == 0
    assert "spandrel" in capsys.readouterr().out
    assert _spandrel_load(out).scale == 3
    assert main(["export", str(d), "--format", "official", "-o", str(out)]) == 2  # three tasks: --task needed
    assert "choose one with --task" in capsys.readouterr().err
    tiny4 = IPT(preset("tiny"), ["sr2"]).save_pretrained(tmp_path / "m4")
    assert main(["export", str(tiny4), "--format", "official", "-o", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "4 attention heads" in err
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize("task", ["sr2", "sr4", "denoise30", "derain"])
def test_bundled_model_exports_every_task_for_spandrel(task: str, tmp_path: Path) -> None:
    """Issue 17: the bundled model has 12 heads, so each of its tasks opens in spandrel (chaiNNer, ComfyUI) as IPT
    and computes our trained function (measured max |diff| 5e-5 to 9e-5 on 0-255)."""
    from ipt.core.checkpoints.bundled import bundled_model_dir

    out = tmp_path / f"ipt_{task}.pth"
    assert main(["export", "bundled", "--format", "official", "--task", task, "-o", str(out)]) == 0
    desc = _spandrel_load(out)
    model = IPT.from_pretrained(bundled_model_dir()).eval()
    assert desc.architecture.name == "IPT" and desc.scale == model.scale(task)
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        theirs = desc(x / 255) * 255
        ours = model(x, task).clamp(0, 255)
    assert float((theirs - ours).abs().max()) <= 1e-3

"""Hooks ``ipt_register_dataset_layouts`` and ``ipt_register_metrics``: registration, clashes, ambiguity, a
broken metric, PSNR-B by hand, and ``ipt eval --metrics``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import ipt.registry.manager as manager
from ipt.cli import main
from ipt.core.data.pairing import detect_layout
from ipt.core.evaluation.evaluate import evaluate_pairs
from ipt.core.evaluation.metrics import MetricError, blocking_effect_factor, psnr_b
from ipt.core.images.io import write_image
from ipt.registry import DatasetLayout, ImagePair, LayoutMatch, MetricSpec, PairingError
from ipt.registry.manager import TaskRegistry, UnknownMetricError


def _plugin(**hooks: object) -> SimpleNamespace:
    from ipt.registry import hookimpl

    return SimpleNamespace(**{name: hookimpl(fn) for name, fn in hooks.items()})


def _builtins() -> list[tuple[str, object, str, str]]:
    import ipt.plugins.derain as derain
    import ipt.plugins.layouts as layouts
    import ipt.plugins.metrics as metrics
    import ipt.plugins.sr as sr

    return [("sr", sr, "ipt-framework", "0"), ("derain", derain, "ipt-framework", "0"),
            ("layouts", layouts, "ipt-framework", "0"), ("metrics", metrics, "ipt-framework", "0")]


@pytest.fixture
def use_registry(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Make ``get_registry()`` return a registry of the built-ins plus the given test plugins."""
    def install(*plugins: tuple[str, object, str, str]) -> TaskRegistry:
        reg = TaskRegistry([*_builtins(), *plugins])
        monkeypatch.setattr(manager, "_REGISTRY", reg)
        return reg

    return install


# -- PSNR-B ----------------------------------------------------------------------------------------------------
def test_bef_by_hand() -> None:
    # 16x16 grey image with a step of 10 between the two 8-px column blocks: every boundary pair of the column
    # boundary differs by 10, every other horizontal or vertical neighbour pair by 0.
    img = torch.zeros(1, 16, 16, dtype=torch.float64)
    img[:, :, 8:] = 10.0
    # Boundary pairs: 16 rows x 1 column boundary + 16 columns x 1 row boundary = 32; squared differences 16 x 100.
    d_b, d_bc = 16 * 100 / 32, 0.0
    eta = math.log2(8) / math.log2(16)
    assert float(blocking_effect_factor(img)[0]) == pytest.approx(eta * (d_b - d_bc))
    ref = torch.full_like(img, 5.0)  # MSE 25 against the reference
    assert psnr_b(img, ref) == pytest.approx(10 * math.log10(255**2 / (25 + eta * (d_b - d_bc))))
    # Steps inside the blocks but not on their boundaries: no blocking effect, PSNR-B equals PSNR.
    smooth = torch.zeros(1, 16, 16, dtype=torch.float64)
    smooth[:, :, 4:] = 10.0
    assert float(blocking_effect_factor(smooth)[0]) == 0.0
    assert psnr_b(smooth, ref) == pytest.approx(10 * math.log10(255**2 / float((smooth - ref).pow(2).mean())))
    assert math.isinf(psnr_b(ref, ref))


# -- layouts ---------------------------------------------------------------------------------------------------
def _find_all(data: Path, spec: object) -> LayoutMatch:
    img = next(data.glob("*.png"))
    return LayoutMatch("everything", [ImagePair("x", img, img)])


def test_layout_name_claimed_by_two_plugins_is_reported(use_registry) -> None:  # noqa: ANN001
    layout = lambda: [DatasetLayout(name="paired_folders", description="mine", find=_find_all)]  # noqa: E731
    reg = use_registry(("thief", _plugin(ipt_register_dataset_layouts=layout), "dist-thief", "9.9"))
    err = reg.plugins["thief"].error
    assert "layout 'paired_folders' is also registered by plugin 'layouts'" in err and "dist-thief 9.9" in err
    assert reg.layouts["paired_folders"].plugin == "layouts"  # the built-in keeps it


def test_a_folder_recognised_by_two_layouts_is_ambiguous(use_registry, tmp_path: Path) -> None:  # noqa: ANN001
    layout = lambda: [DatasetLayout(name="greedy", description="any folder", find=_find_all)]  # noqa: E731
    use_registry(("greedy", _plugin(ipt_register_dataset_layouts=layout), "dist-greedy", "1.0"))
    for name in ("rain-1", "norain-1"):
        write_image(tmp_path / f"{name}.png", torch.full((3, 8, 8), 10.0 if name == "rain-1" else 90.0))
    with pytest.raises(PairingError, match=r"several dataset layouts recognise.*flat_prefix.*greedy \(plugin 'greedy'"):
        detect_layout(tmp_path, "derain")


def test_a_broken_layout_names_its_plugin(use_registry, tmp_path: Path) -> None:  # noqa: ANN001
    def boom(data: Path, spec: object) -> None:
        raise RuntimeError("cannot list")

    use_registry(("bad", _plugin(ipt_register_dataset_layouts=lambda: [
        DatasetLayout(name="bad", description="d", find=boom)]), "dist-bad", "0.1"))
    write_image(tmp_path / "a.png", torch.zeros(3, 8, 8))
    with pytest.raises(PairingError, match=r"layout 'bad' of plugin 'bad' \(dist-bad 0.1\) failed: RuntimeError"):
        detect_layout(tmp_path, "derain")


# -- metrics ---------------------------------------------------------------------------------------------------
def _pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(3, 24, 24, generator=g) * 255).round()
    return [("img0", (clean + 8).clamp(0, 255), clean)]


@pytest.mark.parametrize(("value", "message"), [(math.nan, "returned NaN"), (None, "raised ZeroDivisionError")])
def test_a_broken_metric_names_plugin_and_image(use_registry, value: float | None, message: str) -> None:  # noqa: ANN001
    def compute(a: torch.Tensor, b: torch.Tensor) -> float:
        return value if value is not None else 1 / 0

    use_registry(("flaky", _plugin(ipt_register_metrics=lambda: [
        MetricSpec(name="flaky", description="d", higher_is_better=True, compute=compute)]), "dist-flaky", "2.0"))
    with pytest.raises(MetricError, match=rf"img0: metric 'flaky' of plugin 'flaky' \(dist-flaky 2.0\) {message}"):
        evaluate_pairs(lambda x: x, "derain", _pairs(), metrics=["psnr", "flaky"])
    with pytest.raises(UnknownMetricError, match="unknown metric 'psnrb' \\(did you mean 'psnr_b'"):
        evaluate_pairs(lambda x: x, "derain", _pairs(), metrics=["psnrb"])


def test_metric_colour_spaces_and_defaults(use_registry) -> None:  # noqa: ANN001
    seen: dict[str, tuple[int, ...]] = {}

    def shape_of(name: str):  # noqa: ANN202
        def compute(a: torch.Tensor, b: torch.Tensor) -> float:
            seen[name] = tuple(a.shape)
            return float(a.mean())
        return compute

    metrics = lambda: [MetricSpec(name=f"m_{s}", description="d", higher_is_better=True, compute=shape_of(s),  # noqa: E731
                                  color_space=s) for s in ("y", "rgb", "task")]
    use_registry(("shapes", _plugin(ipt_register_metrics=metrics), "dist-s", "1"))
    res = evaluate_pairs(lambda x: x, "derain", _pairs(), metrics=["m_y", "m_rgb", "m_task"], baseline=True)
    assert seen == {"y": (1, 24, 24), "rgb": (3, 24, 24), "task": (1, 24, 24)}  # derain is scored on Y
    assert set(res.metrics) == {"m_y", "m_rgb", "m_task"} and set(res.baseline.metrics) == set(res.metrics)
    assert res.metric_info["m_task"]["column"] == "M-TASK-Y" and res.metric_info["m_y"]["plugin"] == "shapes"
    default = evaluate_pairs(lambda x: x, "derain", _pairs())
    assert list(default.metrics) == ["psnr", "ssim"]  # the task's MetricConventions.report
    assert default.metrics["psnr"] == pytest.approx(default.psnr_y) and default.metrics["ssim"] == pytest.approx(default.ssim_y)


def test_eval_metrics_flag_json_and_table(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(2):
        write_image(tmp_path / "clean" / f"c{i}.png", (torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(i)) * 255).round())
    args = ["eval", "--task", "denoise30", "--model", str(model_dir), "--data", str(tmp_path / "clean"), "--quiet"]
    assert main([*args, "--json", "--metrics", "psnr,ssim,psnr_b", "--baseline"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["metrics"]) == ["psnr", "ssim", "psnr_b"]
    assert all(list(s["metrics"]) == ["psnr", "ssim", "psnr_b"] for s in out["per_image"].values())
    assert out["metrics"]["psnr_b"] <= out["metrics"]["psnr"] + 1e-9  # the BEF only ever lowers the score
    assert out["metric_info"]["psnr_b"] == {"column": "PSNR-B", "higher_is_better": True, "color_space": "y",
                                            "unit": "dB", "plugin": "metrics", "distribution": "ipt-framework",
                                            "version": out["metric_info"]["psnr_b"]["version"]}
    assert main([*args, "--metrics", "psnr_b"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split() == ["image", "PSNR-Y", "SSIM-Y", "PSNR-RGB", "PSNR-B"]
    assert main([*args, "--metrics", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err

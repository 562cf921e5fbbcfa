"""``ipt bench``: the analytic FLOP count, the official-layout state dict, and the command's JSON report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ipt.cli import main
from ipt.core.benchmarking.flops import counted_flops_per_patch
from ipt.core.checkpoints.official import to_official_state_dict
from ipt.core.commands.bench import flops_per_patch, median_ratio
from ipt.core.model.config import preset
from ipt.core.model import IPT


def test_paper_flops_per_patch() -> None:
    # The figure: 65.9 GFLOP (33 GMAC) per 48x48 patch at scale 1.
    assert flops_per_patch(preset("paper"), 1) / 1e9 == pytest.approx(65.9, abs=0.05)
    # x2 adds the upsampling conv (64 -> 256 ch, 3x3 on 48x48) and a 4x larger output conv.
    extra = 2 * 64 * 256 * 9 * 48 * 48 + 2 * 64 * 3 * 9 * (96 * 96 - 48 * 48)
    assert flops_per_patch(preset("paper"), 2) - flops_per_patch(preset("paper"), 1) == extra


@pytest.mark.parametrize("task", ["sr2", "sr3", "sr4", "denoise30"])
def test_flops_match_torch_flop_counter(task: str) -> None:
    """What ``ipt bench`` reports (torch's FlopCounterMode on the model, batch of 2 minus batch of 1) equals the
    closed form of the built-in head/tail layout."""
    cfg = preset("tiny", num_enc_layers=1, num_dec_layers=2)
    model = IPT(cfg, [task]).eval()
    assert counted_flops_per_patch(model, task) == flops_per_patch(cfg, model.scale(task))


def test_official_state_dict_layout() -> None:
    model = IPT(preset("tiny"), ["sr2", "denoise30"])
    sd = to_official_state_dict(model, ["denoise30", "sr2"])
    assert sd["body.query_embed.weight"].shape == (2, 256 * 144)
    assert torch.equal(sd["body.query_embed.weight"][1].view(256, 144), model.task_embed["sr2"])
    assert torch.equal(sd["head.1.0.weight"], model.heads["sr2"][0].weight)
    assert torch.equal(sd["body.decoder.layers.1.multihead_attn.in_proj_weight"],
                      model.body.decoder[1].cross_attn.qkv.weight)
    assert torch.equal(sd["body.mlp_head.3.bias"], model.body.mlp_head.fc2.bias)
    assert sd["sub_mean.bias"].tolist() == pytest.approx([-0.4488 * 255, -0.4371 * 255, -0.4040 * 255])


def test_median_ratio() -> None:
    assert median_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


def test_bench_tiny_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("spandrel")
    out = tmp_path / "bench.json"
    code = main([
        "bench", "--preset", "tiny", "--repeats", "1", "--warmup", "0", "--batch", "1", "--compare-reference",
        "--image-size", "64x56", "--memory-sizes", "48", "96", "--tile-batch", "4", "--dtype", "fp32,bf16,int8",
        "--json", str(out),
    ])
    assert code == 0
    report = json.loads(out.read_text())
    for key in ("machine", "settings", "flops_per_patch", "ceiling_gflops", "forward", "train", "restore", "memory",
                "reference_check"):
        assert key in report, key
    assert report["settings"]["preset"] == "tiny"
    assert set(report["ceiling_gflops"]) == {"fp32", "bf16", "int8"}
    assert [r["variant"] for r in report["forward"]] == ["reference", "ipt-fp32", "ipt-bf16", "ipt-int8"]
    assert [r["variant"] for r in report["train"]] == ["reference", "ipt-fp32", "ipt-bf16"]  # int8: inference only
    for section in ("forward", "train"):
        for row in report[section]:
            assert row["seconds"] > 0 and row["gflops"] > 0
            assert row["speedup_vs_reference"] > 0
    assert report["reference_check"]["max_rel_diff_fp32"] <= 1e-4
    restore = report["restore"]
    # 64x56 (WxH) image, 48 px tiles with 10 px overlap: 2 x 2 tiles. The official stride-12 protocol: a grid of
    # (56-48)//12+1 = 1 row x (64-48)//12+1 = 2 columns, top/bottom strips of 2, left/right strips of 1, 1 corner.
    assert restore["tiles_paper_protocol"] == 4
    assert restore["tiles_official_protocol"] == 1 * 2 + 2 * 2 + 2 * 1 + 1
    assert restore["official_protocol"]["estimated"] is True
    assert {r["variant"] for r in restore["variants"]} == {"ipt-fp32", "ipt-bf16", "ipt-int8"}
    int8 = next(r for r in restore["variants"] if r["variant"] == "ipt-int8")
    assert int8["pixels_differing_from_fp32"] > 0 and "delta_psnr_y_vs_fp32_db" in int8
    memory = report["memory"]
    assert memory["pixel_ratio"] == 4
    # 48 and 96 px sides plus the 8 px reflection margin on every side: 64 -> 2 x 2 tiles, 112 -> 3 x 3 tiles
    assert memory["large"]["tiles"] == 9 and memory["small"]["tiles"] == 4
    assert memory["one_tile_batch"]["tiles"] == 4  # one --tile-batch of the benchmarked preset
    assert memory["large"]["peak_rss_above_model_mb"] >= 0
    assert "ipt bench" in capsys.readouterr().out


def test_bench_rejects_unknown_dtype(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--preset", "tiny", "--dtype", "fp8"]) == 2
    assert "--dtype: unknown value 'fp8'" in capsys.readouterr().err


def test_gpu_mfu_script_runs_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_train_mfu.py (the H200 measurement) on the CPU with the tiny preset, eager."""
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train_mfu.py"
    out = tmp_path / "gpu.json"
    argv = ["gpu_train_mfu.py", "--device", "cpu", "--preset", "tiny", "--steps", "2", "--warmup", "1", "--batch", "2",
            "--infer-batch", "2", "--no-compile", "--json", str(out)]
    old, sys.argv = sys.argv, argv
    try:
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    assert stop.value.code == 0
    report = json.loads(out.read_text())
    assert report["train"]["steps"] == 2 and report["inference"]["calls"] == 2
    assert report["flops_per_patch"] == flops_per_patch(preset("tiny"), 1)
    assert 0 < report["train"]["mfu"] and 0 < report["inference"]["mfu"]
    assert report["train"]["mean_loss"] > 0  # the loss summed on the device was read back once, at the end


def test_folder_throughput_script_compares_both_ways_on_identical_outputs(tmp_path: Path) -> None:
    """benchmarks/folder_throughput.py (issue 15's folder figure, also run on the GPU) on 3 small images."""
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "folder_throughput.py"
    out = tmp_path / "folder.json"
    old, sys.argv = sys.argv, ["folder_throughput.py", "--images", "3", "--size", "64", "--repeats", "1",
                               "--json", str(out)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = old
    report = json.loads(out.read_text())
    assert report["identical"] is True and report["images"] == 3
    assert len(report["runs"]["one_by_one"]) == len(report["runs"]["stream"]) == 1
    assert report["speedup_wall"] > 0

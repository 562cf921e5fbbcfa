"""``ipt eval`` never writes into the benchmark it scores (case 15, part 2), and scores grey benchmarks as grey."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ipt.core.evaluation.evaluate import evaluate, load_pairs
from ipt.core.evaluation.pairing import detect_layout
from ipt.core.files import OverwriteError
from ipt.core.images.resize import imresize
from ipt.core.model import IPT
from PIL import Image

from ipt.cli import main


def _sha(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


def _photo(h: int, w: int, seed: int = 0, grey: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    base = 128 + 60 * np.sin(xx / 5.0 + seed) * np.cos(yy / 7.0)
    rng = np.random.default_rng(seed)
    if grey:
        return np.clip(base + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)
    return np.clip(base[..., None] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """An EDSR-style x2 benchmark: HR/ast.png (51x39, not divisible by 2) + LR_bicubic/X2/astx2.png."""
    b = tmp_path / "bench"
    (b / "HR").mkdir(parents=True)
    (b / "LR_bicubic" / "X2").mkdir(parents=True)
    hr = _photo(51, 39)
    Image.fromarray(hr).save(b / "HR" / "ast.png")
    lr = imresize(torch.from_numpy(hr[:50, :38].copy()).permute(2, 0, 1).float(), scale=1 / 2)
    Image.fromarray(lr.clamp(0, 255).round().byte().permute(1, 2, 0).numpy()).save(b / "LR_bicubic" / "X2" / "astx2.png")
    return b


@pytest.mark.parametrize("inside", ["HR", ".", "LR_bicubic/X2", "HR/new"])
def test_save_dir_inside_the_benchmark_is_refused(model_dir: Path, bench: Path, inside: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: _sha(p) for p in bench.rglob("*.png")}
    rc = main(["eval", "--task", "sr2", "--model", str(model_dir), "--data", str(bench), "--quiet",
               "--save-dir", str(bench / inside)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--save-dir" in err[0] and "refusing to write over an input" in err[0]
    assert {p: _sha(p) for p in bench.rglob("*.png")} == before
    assert not (bench / "HR" / "new").exists()


def test_save_dir_outside_works_and_single_image_data(model_dir: Path, bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "restored"
    assert main(["eval", "--task", "sr2", "--model", str(model_dir), "--data", str(bench), "--quiet",
                 "--save-dir", str(out)]) == 0
    assert Image.open(out / "ast.png").size == (38, 50)
    # --data one image: its own folder is fine as long as the output does not replace it
    single = bench / "HR" / "ast.png"
    before = _sha(single)
    with pytest.raises(OverwriteError):
        evaluate(IPT.from_pretrained(model_dir), "sr2", single, save_dir=bench / "HR")
    assert main(["eval", "--task", "sr2", "--model", str(model_dir), "--data", str(single), "--quiet",
                 "--save-dir", str(bench / "HR")]) == 2
    assert _sha(single) == before


def test_grey_benchmark_is_degraded_and_scored_as_grey(model_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "greyset"
    d.mkdir()
    Image.fromarray(_photo(40, 44, 1, grey=True), "L").save(d / "g1.png")
    g = _photo(40, 44, 2, grey=True)
    Image.fromarray(np.dstack([g, g, g])).save(d / "g2_rgb.png")  # grey stored as RGB
    Image.fromarray(_photo(40, 44, 3)).save(d / "colour.png")
    model = IPT.from_pretrained(model_dir)
    spec = model.spec("denoise30")
    samples = {s.name: (s.degraded, s.clean, s.grey) for s in load_pairs(detect_layout(d, spec).pairs, spec)}
    for name in ("g1", "g2_rgb"):
        deg, clean, grey = samples[name]
        assert grey and torch.equal(deg[0], deg[1]) and torch.equal(deg[1], deg[2])  # noise on one plane
        assert 20 < float((deg[0] - clean[0]).std()) < 40  # sigma 30 (clipped), not sigma/sqrt(3)
    assert not samples["colour"][2] and not torch.equal(samples["colour"][0][0], samples["colour"][0][1])
    save = tmp_path / "saved"
    rc = main(["eval", "--task", "denoise30", "--model", str(model_dir), "--data", str(d), "--quiet", "--json",
               "--save-dir", str(save)])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["grey_images"] == 2
    assert result["per_image"]["g1"]["grey"] and not result["per_image"]["colour"]["grey"]
    assert Image.open(save / "g1.png").mode == "L" and Image.open(save / "colour.png").mode == "RGB"
    rc = main(["eval", "--task", "denoise30", "--model", str(model_dir), "--data", str(d), "--quiet"])
    table = capsys.readouterr().out
    assert rc == 0 and "g1*" in table and "2 of 3 images are grey" in table

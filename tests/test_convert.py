"""Official checkpoint conversion: exact parity with the official code, clear errors, the ``ipt convert`` CLI.

Oracles: the fixtures that the official code wrote (``shared/official/parity``) and spandrel's copy of the
official architecture (random official-layout checkpoints of other shapes).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from ipt.cli import main
from ipt.core.checkpoints.official import (
    ConversionError,
    UnsafeCheckpointError,
    convert_file,
    convert_official,
    inspect_official,
    read_official_checkpoint,
)
from ipt.core.model import IPT

FP32_TOL = 5e-3  # on the 0-255 scale
FP64_TOL = 1e-6
QUERY = "body.query_embed.weight"


def _shared_dir() -> Path | None:
    candidates = [os.environ.get("IPT_SHARED"), Path(__file__).resolve().parents[2] / "shared", "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "official" / "parity").is_dir():
            return Path(c)
    return None


SHARED = _shared_dir()
needs_fixtures = pytest.mark.skipif(SHARED is None, reason="shared/official/parity fixtures not found (IPT_SHARED)")
SIX_TASKS = ["sr2", "sr3", "sr4", "derain", "denoise30", "denoise50"]


def fixture(name: str) -> Path:
    assert SHARED is not None
    return SHARED / "official" / "parity" / name


def load(path: Path):  # noqa: ANN201
    return torch.load(path, map_location="cpu", weights_only=True)


# -- the official fixtures -------------------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize(("name", "tasks"), [("six-task", SIX_TASKS), ("single-sr3", ["sr3"])])
def test_fixture_outputs_match_official(name: str, tasks: list[str]) -> None:
    d = fixture(name)
    args = json.loads((d / "config.json").read_text())
    state = read_official_checkpoint(d / "state_dict.pt")

    layout = inspect_official(state)
    assert layout.n_feats == args["args"]["n_feats"]
    assert layout.patch_dim == args["args"]["patch_dim"]
    assert layout.patch_size == args["args"]["patch_size"]
    assert layout.num_enc_layers == layout.num_dec_layers == args["args"]["num_layers"]
    assert layout.tail_scales == args["head_index_scale"]
    assert layout.num_queries == args["args"]["num_queries"]
    assert layout.num_parameters == args["params_total"]
    assert layout.rgb_range == 255 and layout.official_mean_shift

    model = convert_official(state, tasks, num_heads=args["args"]["num_heads"])
    assert model.task_names == tasks
    x, ref32, ref64 = load(d / "inputs.pt"), load(d / "outputs.pt"), load(d / "outputs_fp64.pt")
    assert sorted(ref32) == list(range(len(tasks)))
    with torch.no_grad():
        for i, task in enumerate(tasks):
            out = model(x, task)
            assert out.shape == ref32[i].shape
            assert (out - ref32[i]).abs().max().item() <= FP32_TOL, task
        model.double()
        for i, task in enumerate(tasks):
            out = model(x.double(), task)
            assert (out - ref64[i]).abs().max().item() <= FP64_TOL, task


@needs_fixtures
def test_six_head_default_is_official_pretraining_order() -> None:
    model = convert_official(read_official_checkpoint(fixture("six-task") / "state_dict.pt"))
    assert model.task_names == SIX_TASKS
    assert [model.scale(t) for t in model.task_names] == [2, 3, 4, 1, 1, 1]


# -- spandrel's copy of the official architecture as the oracle ------------------------------------------------


def official_model(seed: int = 0, dec_layers: int | None = None, **kw):  # noqa: ANN201
    spandrel_ipt = pytest.importorskip("spandrel.architectures.IPT")
    torch.manual_seed(seed)
    model = spandrel_ipt.IPT(**kw).eval()
    if dec_layers is not None:  # the official code uses one count for both stacks; ours converts any pair
        model.body.decoder.layers = model.body.decoder.layers[:dec_layers]
    return model


def official_forward(model, x: torch.Tensor, index: int) -> torch.Tensor:  # noqa: ANN001
    model.set_scale(index)  # the official model picks head/tail/query row by scale_idx
    with torch.no_grad():
        return model(x.clone())


SPANDREL_CASES = {
    "one-head-x2": (dict(n_feats=8, scale=[2], num_layers=1), ["sr2"], 12),
    "six-heads-default": (dict(n_feats=8, scale=[2, 3, 4, 1, 1, 1], num_layers=1, num_queries=6), None, 12),
    "x3-and-x1-8-heads": (dict(n_feats=8, scale=[3, 1], num_layers=2, num_queries=2, num_heads=8),
                          ["sr3", "derain"], 8),
    "3+1-layers": (dict(n_feats=16, scale=[1], num_layers=3, dec_layers=1), ["denoise50"], 12),
    "patch-dim-4-size-24": (dict(n_feats=8, patch_dim=4, patch_size=24, scale=[4], num_layers=1, num_heads=8),
                            ["sr4"], 8),
    "rgb-range-1": (dict(n_feats=8, scale=[2], num_layers=1, rgb_range=1), ["sr2"], 12),
}


@pytest.mark.parametrize("case", list(SPANDREL_CASES))
def test_random_official_checkpoints_convert_exactly(case: str, tmp_path: Path) -> None:
    kw, tasks, heads = SPANDREL_CASES[case]
    official = official_model(**kw)
    path = tmp_path / "official.pt"
    torch.save(official.state_dict(), path)

    out = convert_file(path, tmp_path / "converted", tasks=tasks, num_heads=heads)
    model = IPT.from_pretrained(out).eval()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    layout = inspect_official(read_official_checkpoint(path), heads)
    assert layout.num_enc_layers == kw["num_layers"]
    assert layout.num_dec_layers == kw.get("dec_layers", kw["num_layers"])
    assert layout.tail_scales == kw["scale"]
    assert layout.patch_dim == kw.get("patch_dim", 3)

    size, rng = official.patch_size, float(official.rgb_range)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, size, size, generator=gen) * rng
    with torch.no_grad():
        for i, task in enumerate(model.task_names):
            ref = official_forward(official, x, i)
            assert ref.shape[-1] == size * kw["scale"][i]
            assert (model(x, task) - ref).abs().max().item() <= FP32_TOL * rng / 255, task
        official.double()
        model.double()
        for i, task in enumerate(model.task_names):
            ref = official_forward(official, x.double(), i)
            assert (model(x.double(), task) - ref).abs().max().item() <= FP64_TOL, task


def test_custom_mean_shift_is_carried_into_the_config() -> None:
    official = official_model(n_feats=8, scale=[2], num_layers=1)
    mean = torch.tensor([0.5, 0.375, 0.25])  # exact in binary: the bias round-trips bit for bit
    official.sub_mean.bias.data = -255 * mean
    official.add_mean.bias.data = 255 * mean
    model = convert_official(official.state_dict(), ["sr2"]).double()
    assert model.config.rgb_mean == pytest.approx((0.5, 0.375, 0.25))
    x = torch.rand(1, 3, 48, 48, dtype=torch.float64) * 255
    with torch.no_grad():
        assert (model(x, "sr2") - official_forward(official.double(), x, 0)).abs().max().item() <= FP64_TOL


def test_tail_scales_are_inferred_from_upsampler_convs() -> None:
    official = official_model(n_feats=4, scale=[1, 2, 3, 4, 8], num_layers=1, num_queries=5)
    layout = inspect_official(official.state_dict())
    assert layout.tail_scales == [1, 2, 3, 4, 8]
    assert layout.default_tasks is None
    with pytest.raises(ConversionError, match="task sr3 has scale 3 but tail 1 upsamples x2"):
        convert_official(official.state_dict(), ["derain", "sr3", "sr2", "sr4", "denoise30"])


def paper_state(name: str, device: str) -> tuple[dict[str, torch.Tensor], int]:
    """A state dict with the key layout and shapes of an official paper-size checkpoint (values: zeros)."""
    spec = json.loads((SHARED / "official" / name).read_text())  # type: ignore[operator]
    state = {k: torch.zeros(shape, device=device) for k, shape in spec["state_dict"].items()}
    mean = 255 * torch.tensor((0.4488, 0.4371, 0.4040))
    for sign, conv in ((-1, "sub_mean"), (1, "add_mean")):
        state[f"{conv}.weight"] = torch.eye(3).view(3, 3, 1, 1)
        state[f"{conv}.bias"] = sign * mean
    if "body.position_encoding.position_ids" in state:
        state["body.position_encoding.position_ids"] = torch.arange(256).view(1, 256)
    return state, spec["params_total"]


@needs_fixtures
@pytest.mark.parametrize(("name", "scales"), [("paper-six-task-keys.json", [2, 3, 4, 1, 1, 1]),
                                              ("paper-single-sr2-keys.json", [2])])
def test_paper_layouts_are_inferred_from_shapes(name: str, scales: list[int]) -> None:
    state, params_total = paper_state(name, device="meta")  # shapes only: no memory for 118M values
    layout = inspect_official(state)
    assert (layout.n_feats, layout.patch_dim, layout.patch_size, layout.embed_dim) == (64, 3, 48, 576)
    assert (layout.num_enc_layers, layout.num_dec_layers, layout.mlp_ratio, layout.res_kernel) == (12, 12, 4, 5)
    assert layout.tail_scales == scales and layout.num_queries == len(scales)
    assert layout.num_parameters == params_total


@needs_fixtures
@pytest.mark.slow
def test_paper_six_task_layout_converts() -> None:
    state, params_total = paper_state("paper-six-task-keys.json", device="cpu")
    model = convert_official(state)
    assert model.task_names == SIX_TASKS
    assert model.num_parameters() == params_total - 24  # the mean shift is a fixed buffer in our model


# -- bad checkpoints -------------------------------------------------------------------------------------------


@pytest.fixture
def small_state() -> dict[str, torch.Tensor]:
    return official_model(n_feats=8, scale=[2, 1], num_layers=2, num_queries=2).state_dict()


def test_truncated_file_names_the_file(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    torch.save(small_state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r"cut\.pt: cannot read the checkpoint \(truncated"):
        read_official_checkpoint(path)


def test_renamed_key_is_listed_as_missing_and_unexpected(small_state: dict) -> None:
    small_state["body.decoder.layers.1.linear1.wrong"] = small_state.pop("body.decoder.layers.1.linear1.weight")
    with pytest.raises(ConversionError) as err:
        convert_official(small_state, ["sr2", "derain"])
    msg = str(err.value)
    assert "missing: body.decoder.layers.1.linear1.weight" in msg
    assert "unexpected: body.decoder.layers.1.linear1.wrong" in msg


def test_missing_tensor_is_listed(small_state: dict) -> None:
    del small_state["head.1.2.body.0.bias"], small_state["add_mean.bias"]
    with pytest.raises(ConversionError, match=r"missing: add_mean\.bias, head\.1\.2\.body\.0\.bias\)"):
        convert_official(small_state, ["sr2", "derain"])


def test_misshaped_tensor_is_listed(small_state: dict) -> None:
    small_state["body.encoder.layers.0.linear2.bias"] = torch.zeros(5)
    small_state[QUERY] = small_state[QUERY][:, :-1]
    with pytest.raises(ConversionError) as err:
        inspect_official(small_state)
    assert "body.query_embed.weight has shape (2, 18431)" in str(err.value)
    small_state[QUERY] = torch.zeros(2, 18432)
    with pytest.raises(ConversionError, match=r"mis-shaped: body\.encoder\.layers\.0\.linear2\.bias: "
                                              r"expected \(72,\), found \(5,\)"):
        convert_official(small_state, ["sr2", "derain"])


def test_bad_position_ids_and_mean_shift_are_refused(small_state: dict) -> None:
    bad_ids = dict(small_state)
    bad_ids["body.position_encoding.position_ids"] = torch.arange(256).flip(0).view(1, -1)
    with pytest.raises(ConversionError, match="position_ids is not arange"):
        convert_official(bad_ids, ["sr2", "derain"])
    scaled = dict(small_state)
    scaled["sub_mean.weight"] = 2 * scaled["sub_mean.weight"]
    with pytest.raises(ConversionError, match="sub_mean.weight is not the identity"):
        inspect_official(scaled)
    nan = dict(small_state)
    nan["tail.1.1.bias"] = torch.full((3,), float("nan"))
    with pytest.raises(ConversionError, match=r"non-finite values .* tail\.1\.1\.bias"):
        convert_official(nan, ["sr2", "derain"])


def test_task_list_is_checked(small_state: dict) -> None:
    with pytest.raises(ConversionError, match="1 task"):
        convert_official(small_state, ["sr2"])
    with pytest.raises(ConversionError, match="repeated: sr2"):
        convert_official(small_state, ["sr2", "sr2"])
    with pytest.raises(ConversionError, match="--tasks"):
        convert_official(small_state)
    with pytest.raises(ConversionError, match="--num-heads 7 does not divide the token dim 72"):
        convert_official(small_state, ["sr2", "derain"], num_heads=7)


def _record_unpickling(marker: str) -> None:
    Path(marker).write_text("arbitrary code ran")


class Payload:
    """An object whose unpickling runs code: a weights-only loader must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (_record_unpickling, (self.marker,))


def test_non_weights_only_pickle_is_refused(small_state: dict, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": small_state, "extra": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"refusing to unpickle arbitrary objects from .*evil\.pt"):
        read_official_checkpoint(path)
    assert not marker.exists()


def test_wrapped_and_prefixed_state_dicts_are_unwrapped(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in small_state.items()}}, path)
    state = read_official_checkpoint(path)
    assert state.keys() == small_state.keys()
    assert all(torch.equal(state[k], small_state[k]) for k in state)
    path2 = tmp_path / "nested.pt"
    torch.save({"net": {"model": small_state}}, path2)
    assert read_official_checkpoint(path2).keys() == small_state.keys()
    torch.save({"epoch": 3}, path2)
    with pytest.raises(ConversionError, match="no state dict of tensors found"):
        read_official_checkpoint(path2)


# -- the CLI ---------------------------------------------------------------------------------------------------


@needs_fixtures
def test_cli_inspect_prints_layout_and_writes_nothing(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "--inspect", str(fixture("six-task") / "state_dict.pt")]) == 0
    out = capsys.readouterr().out
    assert "n_feats       16" in out
    assert "6 with scales 2, 3, 4, 1, 1, 1" in out
    assert "2 encoder + 2 decoder" in out
    assert "1,820,538" in out
    assert "0 -> sr2 (x2), 1 -> sr3 (x3), 2 -> sr4 (x4), 3 -> derain (x1)" in out
    assert list(tmp_path.iterdir()) == []


@needs_fixtures
def test_cli_convert_writes_a_loadable_model(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    src = fixture("six-task")
    out = tmp_path / "ipt-pretrain"
    assert main(["convert", str(src / "state_dict.pt"), str(out), "--tasks", ",".join(SIX_TASKS)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert [t["name"] for t in cfg["tasks"]] == SIX_TASKS
    assert cfg["source"]["file"] == "state_dict.pt"
    assert cfg["source"]["layout"]["n_feats"] == 16
    model = IPT.from_pretrained(out).eval()
    x, ref = load(src / "inputs.pt"), load(src / "outputs.pt")
    with torch.no_grad():
        for i, task in enumerate(SIX_TASKS):
            assert (model(x, task) - ref[i]).abs().max().item() <= FP32_TOL


@needs_fixtures
def test_cli_single_head_needs_tasks(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "sr3"
    assert main(["convert", str(fixture("single-sr3") / "state_dict.pt"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ipt convert: error:") and "--tasks" in err and "x3" in err
    assert not out.exists()
    assert main(["convert", str(fixture("single-sr3") / "state_dict.pt"), str(out), "--tasks", "sr3"]) == 0
    assert IPT.from_pretrained(out).task_names == ["sr3"]


def test_convert_never_replaces_an_unrelated_folder(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "official.pt"
    torch.save(small_state, path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.png").write_bytes(b"x")
    with pytest.raises(ConversionError, match="photos: exists and is not a model directory"):
        convert_file(path, tmp_path / "photos", tasks=["sr2", "derain"])
    assert (tmp_path / "photos" / "keep.png").read_bytes() == b"x"
    out = convert_file(path, tmp_path / "model", tasks=["sr2", "derain"])
    assert convert_file(path, out, tasks=["sr2", "denoise30"]) == out  # a model directory is replaced
    assert IPT.from_pretrained(out).task_names == ["sr2", "denoise30"]


def test_cli_refuses_unsafe_pickle_in_one_line(small_state: dict, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": small_state, "extra": Payload(tmp_path / "ran")}, path)
    assert main(["convert", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refusing to unpickle" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    from ipt.core.checkpoints.official import ConversionError, read_official_checkpoint

    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(ConversionError, match="notes.txt: not a PyTorch checkpoint"):
        read_official_checkpoint(text)


# -- which state dict of a wrapped checkpoint (case 20: BasicSR params/params_ema) -----------------------------


def _shifted(state: dict, delta: float) -> dict:
    return {k: (v if "mean" in k or "position_ids" in k else v + delta) for k, v in state.items()}


@pytest.mark.parametrize(
    ("wrapped", "expect_key", "expect_delta", "others"),
    [
        (lambda live, ema: {"params": live, "params_ema": ema}, "params_ema", 0.05, ["params"]),  # BasicSR
        (lambda live, ema: {"params_ema": ema, "params": live}, "params_ema", 0.05, ["params"]),  # order-free
        (lambda live, ema: {"state_dict": live, "state_dict_ema": ema, "epoch": 3}, "state_dict_ema", 0.05,
         ["state_dict"]),  # timm
        (lambda live, ema: {"model": live, "model_ema": ema, "optimizer": {"lr": torch.tensor(1.0)}}, "model_ema",
         0.05, ["model"]),
        (lambda live, ema: {"net": {"model": live}}, "net/model", 0.0, []),  # nested, one candidate
        (lambda live, ema: live, None, 0.0, []),  # a bare state dict
    ],
)
def test_ema_weights_are_preferred_and_the_key_is_reported(small_state: dict, wrapped, expect_key: str | None,
                                                           expect_delta: float, others: list[str]) -> None:
    from ipt.core.checkpoints.official import find_state_dict

    found = find_state_dict(wrapped(small_state, _shifted(small_state, 0.05)), "ckpt")
    assert found.key == expect_key and list(found.others) == others
    key = "head.0.0.weight"
    assert torch.allclose(found.state[key], small_state[key] + expect_delta, atol=0, rtol=0)


def test_key_chooses_and_unknown_key_lists_candidates(small_state: dict) -> None:
    from ipt.core.checkpoints.official import find_state_dict

    obj = {"params": small_state, "params_ema": _shifted(small_state, 0.05), "meta": {"iter": torch.tensor(3)}}
    assert torch.equal(find_state_dict(obj, "ckpt", key="params").state["head.0.0.weight"],
                       small_state["head.0.0.weight"])
    with pytest.raises(ConversionError, match=r"--key 'ema'.*candidates: 'params_ema', 'params'"):
        find_state_dict(obj, "ckpt", key="ema")
    two = {"generator_a": small_state, "generator_b": small_state}  # no known wrapper name: never guess
    with pytest.raises(ConversionError, match=r"several state dicts \('generator_a', 'generator_b'\).*--key"):
        find_state_dict(two, "ckpt")
    assert find_state_dict(two, "ckpt", key="generator_b").key == "generator_b"


def test_cli_convert_takes_ema_says_so_and_records_it(small_state: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "basicsr_style.pth"
    torch.save({"params": small_state, "params_ema": _shifted(small_state, 0.05)}, path)
    assert main(["convert", str(path), str(tmp_path / "ema"), "--tasks", "sr2,denoise30"]) == 0
    assert "weights: 'params_ema' (also in the file: 'params'; choose with --key)" in capsys.readouterr().out
    source = json.loads((tmp_path / "ema" / "config.json").read_text())["source"]
    assert source["key"] == "params_ema" and source["other_keys"] == ["params"]
    assert main(["convert", str(path), str(tmp_path / "live"), "--tasks", "sr2,denoise30", "--key", "params"]) == 0
    ema, live = (IPT.from_pretrained(tmp_path / d).state_dict() for d in ("ema", "live"))
    assert torch.allclose(ema["heads.sr2.0.weight"], live["heads.sr2.0.weight"] + 0.05, atol=1e-6, rtol=0)
    assert json.loads((tmp_path / "live" / "config.json").read_text())["source"]["key"] == "params"
    assert main(["convert", str(path), "--inspect", "--key", "nope"]) == 2
    assert "--key 'nope'" in capsys.readouterr().err

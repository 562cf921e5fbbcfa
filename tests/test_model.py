"""The IPT network: shapes, parameter counts against the official code, gradients, task add/drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from ipt.core.model.config import ModelConfig, preset
from ipt.core.model import IPT, UnknownModelTaskError, build_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
SIX = ["sr2", "sr3", "sr4", "derain", "denoise30", "denoise50"]


@pytest.fixture(scope="module")
def tiny() -> IPT:
    torch.manual_seed(0)
    return build_model("tiny", SIX).eval()


@pytest.mark.parametrize("task,side", [("sr2", 96), ("sr3", 144), ("sr4", 192), ("denoise30", 48), ("derain", 48)])
def test_output_shapes(tiny: IPT, task: str, side: int) -> None:
    x = torch.rand(2, 3, 48, 48) * 255
    with torch.no_grad():
        y, tokens = tiny(x, task, return_tokens=True)
    assert y.shape == (2, 3, side, side)
    assert tokens.shape == (2, 256, tiny.config.embed_dim)


def _official_counts() -> tuple[int, int]:
    path = SHARED / "official" / "paper-six-task-keys.json"
    if not path.exists():
        pytest.skip("../shared/official not present")
    six = json.loads(path.read_text())
    one = json.loads((SHARED / "official" / "paper-single-sr2-keys.json").read_text())
    return six["params_total"], one["params_total"]


def test_paper_parameter_count_equals_official() -> None:
    six_total, one_total = _official_counts()
    # The official count includes the 24 values of the two frozen 1x1 mean-shift convs; ours is a constant buffer.
    mean_shift = 2 * (3 * 3 + 3)
    with torch.device("meta"):
        six = build_model("paper", SIX)
        one = build_model("paper", ["sr2"])
    assert six.num_parameters() == six_total - mean_shift == 118_892_370
    assert one.num_parameters() == one_total - mean_shift


def test_paper_shapes_match_official_key_shapes() -> None:
    path = SHARED / "official" / "paper-six-task-keys.json"
    if not path.exists():
        pytest.skip("../shared/official not present")
    shapes = json.loads(path.read_text())["state_dict"]
    with torch.device("meta"):
        m = build_model("paper", SIX)
    ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert ours["body.encoder.0.attn.qkv.weight"] == tuple(shapes["body.encoder.layers.0.self_attn.in_proj_weight"])
    assert ours["body.pos_embed"] == tuple(shapes["body.position_encoding.pe.weight"])
    assert ours["task_embed.sr2"][0] * ours["task_embed.sr2"][1] == shapes["body.query_embed.weight"][1]
    assert ours["tails.sr4.0.2.weight"] == tuple(shapes["tail.2.0.2.weight"])
    assert ours["heads.derain.1.body.0.weight"] == tuple(shapes["head.3.1.body.0.weight"])
    assert len(m.body.encoder) == len(m.body.decoder) == 12


def test_gradients_reach_used_task_and_body_only(tiny: IPT) -> None:
    model = build_model("tiny", ["sr2", "denoise30"]).train()
    x = torch.rand(2, 3, 48, 48) * 255
    out, tokens = model(x, "sr2", return_tokens=True)
    (out.mean() + tokens.mean()).backward()
    for name, p in model.named_parameters():
        used = not (name.startswith(("heads.denoise30", "tails.denoise30")) or name == "task_embed.denoise30")
        if used:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        else:
            assert p.grad is None, f"{name} of an unused task got a gradient"


def test_add_and_keep_tasks() -> None:
    model = build_model("tiny", ["sr2", "denoise30"])
    body_before = {k: v.clone() for k, v in model.body.state_dict().items()}
    model.add_task("denoise70", embed_init="denoise30")
    assert model.task_names == ["sr2", "denoise30", "denoise70"]
    assert torch.equal(model.task_embed["denoise70"], model.task_embed["denoise30"])
    model.keep_tasks(["denoise70"])
    assert model.task_names == ["denoise70"]
    assert all(torch.equal(v, body_before[k]) for k, v in model.body.state_dict().items())
    assert not any(k.startswith(("heads.sr2", "tails.denoise30")) for k in model.state_dict())
    with pytest.raises(ValueError, match="already has task"):
        model.add_task("denoise70")


def test_unknown_task_lists_model_tasks(tiny: IPT) -> None:
    with pytest.raises(UnknownModelTaskError, match="it has: sr2, sr3"):
        tiny(torch.zeros(1, 3, 48, 48), "dehaze")


def test_wrong_input_size_is_a_clear_error(tiny: IPT) -> None:
    with pytest.raises(ValueError, match="TiledRestorer"):
        tiny(torch.zeros(1, 3, 40, 48), "sr2")


@pytest.mark.parametrize(
    "overrides,field",
    [({"n_feats": 16, "num_heads": 7}, "num_heads"), ({"patch_size": 50}, "patch_size"), ({"n_feats": 0}, "n_feats")],
)
def test_invalid_config_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ModelConfig(**overrides)


def test_presets() -> None:
    assert preset("paper").embed_dim == 576 and preset("paper").num_tokens == 256
    assert preset("tiny", num_enc_layers=1).num_enc_layers == 1
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


def test_matches_official_fixture_fp64() -> None:
    """A hand mapping of the official fixture reproduces its float64 outputs (full converter: test_convert.py)."""
    d = SHARED / "official" / "parity" / "single-sr3"
    if not d.exists():
        pytest.skip("../shared/official not present")
    sd = torch.load(d / "state_dict.pt", weights_only=True)
    model = IPT(ModelConfig(n_feats=16, num_heads=12, num_enc_layers=1, num_dec_layers=1), ["sr3"]).double()
    new = {}
    for k, v in sd.items():
        if k.startswith(("sub_mean", "add_mean")) or k.endswith("position_ids"):
            continue
        if k.startswith(("head.0.", "tail.0.")):
            k = k.replace("head.0.", "heads.sr3.", 1).replace("tail.0.", "tails.sr3.", 1)
        if k == "body.query_embed.weight":
            new["task_embed.sr3"] = v.view(256, -1)
            continue
        k = k.replace("position_encoding.pe.weight", "pos_embed").replace(".layers.", ".")
        k = k.replace("in_proj_weight", "qkv.weight").replace("out_proj", "proj").replace("multihead_attn", "cross_attn")
        k = k.replace("linear1", "mlp.fc1").replace("linear2", "mlp.fc2")
        k = k.replace("mlp_head.0", "mlp_head.fc1").replace("mlp_head.3", "mlp_head.fc2")
        if ".encoder." in k:
            k = k.replace("self_attn.", "attn.")
        new[k] = v.double()
    model.load_state_dict(new, strict=True)
    x = torch.load(d / "inputs.pt", weights_only=True).double()
    want = torch.load(d / "outputs_fp64.pt", weights_only=True)[0]
    with torch.no_grad():
        got = model.eval()(x, "sr3")
    assert (got - want).abs().max().item() < 1e-6

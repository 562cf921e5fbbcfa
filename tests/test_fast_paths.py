"""The fast paths of the model compute the same function as plain fp32 code and as the official architecture.

Attention (SDPA, fused QKV, task embedding projected once) is checked against attention written out here by hand;
half precision against fp32 within bf16 rounding; whole models against spandrel's copy of the official IPT with
the same weights (fp64), forward and gradients.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from ipt.core.checkpoints.official import build_reference, to_official_state_dict
from ipt.core.model.config import preset
from ipt.core.model import fused_linear
from ipt.core.model.fused_linear import onednn_paths
from ipt.core.model.ipt import IPT, Attention

TASKS = ["sr2", "sr3", "denoise30"]


def plain_attention(x: torch.Tensor, w_qkv: torch.Tensor, w_out: torch.Tensor, heads: int,
                    q_add: torch.Tensor | None = None, k_add: torch.Tensor | None = None,
                    kv: torch.Tensor | None = None) -> torch.Tensor:
    """Textbook multi-head attention: q = (x + q_add) Wq, k = (m + k_add) Wk, v = m Wv with m = kv or x."""
    d = x.shape[-1]
    m = x if kv is None else kv
    wq, wk, wv = w_qkv[:d], w_qkv[d : 2 * d], w_qkv[2 * d :]
    q = (x if q_add is None else x + q_add) @ wq.T
    k = (m if k_add is None else m + k_add) @ wk.T
    v = m @ wv.T
    b, n, _ = q.shape
    dh = d // heads
    q, k, v = (t.reshape(b, -1, heads, dh).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, d)
    return out @ w_out.T


@pytest.fixture(scope="module")
def attn() -> Attention:
    torch.manual_seed(0)
    return Attention(48, 4).double().eval()


def test_self_attention_matches_plain(attn: Attention) -> None:
    x = torch.randn(3, 20, 48, dtype=torch.float64)
    e = torch.randn(20, 48, dtype=torch.float64)
    w, wo = attn.qkv.weight, attn.proj.weight
    with torch.no_grad():
        assert torch.allclose(attn(x), plain_attention(x, w, wo, 4), atol=1e-12, rtol=0)
        # The task embedding is projected once, then added: W(x + e) = Wx + We.
        assert torch.allclose(attn(x, qk_embed=e), plain_attention(x, w, wo, 4, q_add=e, k_add=e), atol=1e-12, rtol=0)


def test_cross_attention_matches_plain(attn: Attention) -> None:
    x = torch.randn(2, 20, 48, dtype=torch.float64)
    mem = torch.randn(2, 20, 48, dtype=torch.float64)
    e = torch.randn(20, 48, dtype=torch.float64)
    with torch.no_grad():
        got = attn.cross(x, mem, q_embed=e)
    want = plain_attention(x, attn.qkv.weight, attn.proj.weight, 4, q_add=e, kv=mem)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_fused_residual_matches_separate_add(attn: Attention) -> None:
    """The residual accumulated inside the output projection's GEMM equals adding it afterwards."""
    x = torch.randn(2, 20, 48, dtype=torch.float64)
    r = torch.randn(2, 20, 48, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(attn(x, residual=r), r + attn(x), atol=1e-12, rtol=0)
        mem = torch.randn(2, 20, 48, dtype=torch.float64)
        assert torch.allclose(attn.cross(x, mem, residual=r), r + attn.cross(x, mem), atol=1e-12, rtol=0)


@pytest.fixture(scope="module")
def tiny64() -> IPT:
    torch.manual_seed(0)
    return IPT(preset("tiny"), TASKS).double().eval()


@pytest.mark.parametrize("index,task", list(enumerate(TASKS)))
def test_matches_official_architecture_fp64(tiny64: IPT, index: int, task: str) -> None:
    pytest.importorskip("spandrel")
    ref = build_reference(tiny64, TASKS).eval()  # strict=True load of the converted state dict
    ref.set_scale(index)
    x = torch.rand(2, 3, 48, 48, dtype=torch.float64) * 255
    with torch.no_grad():
        ours, theirs = tiny64(x, task), ref(x)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_gradients_match_official_architecture_fp64(tiny64: IPT) -> None:
    """Training goes through the same fast paths (fused residuals, SDPA): L1 gradients equal the official ones."""
    pytest.importorskip("spandrel")
    model = copy.deepcopy(tiny64).train()
    ref = build_reference(model, TASKS).train()
    ref.set_scale(0)
    x = torch.rand(2, 3, 48, 48, dtype=torch.float64) * 255
    target = torch.rand(2, 3, 96, 96, dtype=torch.float64) * 255
    F.l1_loss(model(x, "sr2"), target).backward()
    F.l1_loss(ref(x), target).backward()
    ref_grads = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
    ours = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    mapped = to_official_state_dict(_as_module_with(model, ours), TASKS)
    for key, grad in ref_grads.items():
        if key == "body.query_embed.weight":
            grad = grad[0]  # only task 0 gets a gradient
            mine = mapped[key][0]
        else:
            mine = mapped[key]
        assert torch.allclose(mine, grad, atol=1e-9, rtol=1e-7), key


def _as_module_with(model: IPT, tensors: dict[str, torch.Tensor]) -> IPT:
    """A copy of ``model`` whose parameters hold ``tensors`` (zeros where a parameter had no gradient)."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            p.copy_(tensors.get(name, torch.zeros_like(p)))
    return clone


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return 10 * math.log10(255**2 / mse) if mse > 0 else float("inf")


def test_bf16_autocast_close_to_fp32_with_grad() -> None:
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["sr2"]).eval()
    x = torch.rand(2, 3, 48, 48) * 255
    # Autograd on: the plain autocast path (the oneDNN path runs only without autograd).
    fp32 = model(x, "sr2").detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x, "sr2").detach()
    assert bf16.dtype == torch.float32  # the mean shift brings the output back to fp32
    # bf16 keeps 8 mantissa bits: ~0.4% relative error per op, far below one 8-bit grey level on average.
    assert _psnr(bf16, fp32) > 40


def test_bf16_training_step_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["denoise30"]).train()
    x = torch.rand(2, 3, 48, 48) * 255
    target = torch.rand(2, 3, 48, 48) * 255
    grads = []
    for dtype in (None, torch.bfloat16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(x, "denoise30")
        F.l1_loss(out.float(), target).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    cos = F.cosine_similarity(grads[0], grads[1], dim=0).item()
    assert cos > 0.99


def test_channels_last_matches() -> None:
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["sr2"]).eval()
    x = torch.rand(2, 3, 48, 48) * 255
    with torch.inference_mode():
        want = model(x, "sr2")
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        got = cl(x.contiguous(memory_format=torch.channels_last), "sr2")
    assert torch.allclose(got, want, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["sr2"]).eval()
    x = torch.rand(2, 3, 48, 48) * 255
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: the forward must have no graph breaks
    with torch.inference_mode():
        want = model(x, "sr2")
        got = compiled(x, "sr2")
    assert torch.allclose(got, want, atol=2e-3, rtol=0)


def _plain(model: IPT, x: torch.Tensor, task: str) -> torch.Tensor:
    """The model's output with the oneDNN inference path switched off (plain F.linear / addmm)."""
    with onednn_paths(inference=False):
        return model(x, task)


def test_onednn_inference_path_matches_plain_fp32() -> None:
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["sr2"]).eval()
    x = torch.rand(3, 3, 48, 48) * 255
    with torch.inference_mode():
        fast, plain = model(x, "sr2"), _plain(model, x, "sr2")
    # Same fp32 arithmetic, another summation order: differences at fp32 rounding level of 0-255 outputs.
    assert (fast - plain).abs().max().item() <= 2e-3
    assert len(model.body.packed._entries) > 0  # the fast path did run


def test_packed_weights_follow_weight_updates() -> None:
    """After an in-place update or a state-dict load, inference uses the new weights, not stale packed copies."""
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["denoise30"]).eval()
    other = IPT(preset("tiny"), ["denoise30"]).eval()
    x = torch.rand(2, 3, 48, 48) * 255
    with torch.no_grad():
        model(x, "denoise30")  # fills the packed-weight caches
        for p in model.parameters():
            p.mul_(0.5)
        assert torch.allclose(model(x, "denoise30"), _plain(model, x, "denoise30"), atol=2e-3, rtol=0)
        model.load_state_dict(other.state_dict())
        assert torch.allclose(model(x, "denoise30"), _plain(other, x, "denoise30"), atol=2e-3, rtol=0)


def test_onednn_bf16_autocast_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["sr2"]).eval()
    x = torch.rand(2, 3, 48, 48) * 255
    with torch.inference_mode():
        fp32 = _plain(model, x, "sr2")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(x, "sr2")
            plain = _plain(model, x, "sr2")
    assert _psnr(fast, fp32) > 40
    assert _psnr(plain, fp32) > 40


def test_inference_cache_is_dropped_on_to_and_on_request() -> None:
    """Writes through ``.data`` bypass the cache's version check: ``clear_inference_cache`` and ``.to()`` fix it."""
    from ipt.core.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny", ["denoise30"]).eval()
    x = torch.rand(1, 3, 48, 48) * 255

    def plain() -> torch.Tensor:
        with onednn_paths(inference=False), torch.inference_mode():
            return model(x, "denoise30")

    with torch.inference_mode():
        model(x, "denoise30")  # fills the cache where the oneDNN path is available
    for p in model.body.parameters():
        p.data.mul_(1.01)
    model.clear_inference_cache()
    with torch.inference_mode():
        assert (model(x, "denoise30") - plain()).abs().max() < 5e-3
    for p in model.body.parameters():
        p.data.mul_(1.01)
    model.double().float()
    with torch.inference_mode():
        assert (model(x, "denoise30") - plain()).abs().max() < 5e-3


# --- the oneDNN training path (fp32 CPU with autograd) -------------------------------------------------------------

needs_onednn = pytest.mark.skipif(not fused_linear._HAS_ONEDNN_LINEAR, reason="this torch build has no oneDNN linear")


def _grads(fn: Callable[[], torch.Tensor], *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    for t in tensors:
        t.grad = None
    y = fn()
    # a non-uniform upstream gradient, so that every term of the backward is exercised
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return y.detach(), [None if t.grad is None else t.grad.clone() for t in tensors]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("epilogue", ["none", "relu", "residual", "relu+residual"])
@pytest.mark.parametrize("layout", ["contiguous", "transposed_input", "weight_slice", "frozen_input"])
def test_onednn_training_linear_matches_autograd(bias: bool, epilogue: str, layout: str) -> None:
    torch.manual_seed(0)
    big = torch.randn(40, 24)
    w = (big[:16] if layout == "weight_slice" else torch.randn(16, 24)).requires_grad_()
    b = torch.randn(16).requires_grad_() if bias else None
    x = (torch.randn(2, 24, 9).transpose(1, 2) if layout == "transposed_input" else torch.randn(2, 9, 24))
    x.requires_grad_(layout != "frozen_input")
    r = torch.randn(2, 9, 16).requires_grad_() if "residual" in epilogue else None
    relu = "relu" in epilogue
    leaves = [t for t in (x, w, b, r) if t is not None]

    def want() -> torch.Tensor:
        y = F.linear(x, w, b)
        y = F.relu(y) if relu else y
        return y if r is None else r + y

    def got() -> torch.Tensor:
        y = fused_linear.linear(x, w, b, relu=relu, residual=r)
        assert "OneDNNLinearFunction" in type(y.grad_fn).__name__ or (relu and r is not None)
        return y

    y_want, g_want = _grads(want, *leaves)
    y_got, g_got = _grads(got, *leaves)
    assert torch.allclose(y_got, y_want, atol=1e-5, rtol=1e-5)
    for t, a, e in zip(leaves, g_got, g_want):
        if not t.requires_grad:
            continue
        assert a is not None and e is not None
        assert torch.allclose(a, e, atol=1e-5, rtol=1e-5)


def _model_grads(model: IPT, x: torch.Tensor, target: torch.Tensor, onednn: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with onednn_paths(training=onednn):  # backward too: checkpointing recomputes the forward there
        F.l1_loss(model(x, "sr2"), target).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@needs_onednn
@pytest.mark.parametrize("checkpointing", [False, True])
def test_onednn_training_path_gives_the_plain_gradients(checkpointing: bool) -> None:
    """A whole training step's gradients: oneDNN training path == F.linear autograd, up to fp32 rounding."""
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["sr2", "denoise30"]).train()
    model.body.grad_checkpointing = checkpointing
    x = torch.rand(2, 3, 48, 48) * 255
    target = torch.rand(2, 3, 96, 96) * 255
    plain = _model_grads(model, x, target, onednn=False)
    fast = _model_grads(model, x, target, onednn=True)
    assert plain.keys() == fast.keys() and len(plain) > 0
    assert not any(n.startswith(("heads.denoise30", "tails.denoise30")) for n in fast)  # only the task's own parts
    for name, g in plain.items():
        scale = g.abs().max().item() + 1e-12
        assert (fast[name] - g).abs().max().item() <= 1e-4 * scale, name


@needs_onednn
def test_onednn_training_path_is_used_and_can_be_switched_off() -> None:
    torch.manual_seed(0)
    model = IPT(preset("tiny"), ["sr2"]).train()
    x = torch.rand(1, 3, 48, 48) * 255

    def graph_nodes(out: torch.Tensor) -> set[str]:
        seen, todo, names = set(), [out.grad_fn], set()
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            names.add(type(node).__name__)
            todo.extend(n for n, _ in node.next_functions)
        return names

    assert any("OneDNNLinearFunction" in n for n in graph_nodes(model(x, "sr2")))
    with onednn_paths(training=False):
        assert not any("OneDNNLinearFunction" in n for n in graph_nodes(model(x, "sr2")))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast training keeps the plain (autocast) path
        assert not any("OneDNNLinearFunction" in n for n in graph_nodes(model(x, "sr2")))


def test_ipt_onednn_environment_variable_turns_the_paths_off() -> None:
    code = "import ipt.core.model.fused_linear as f; print(f.ONEDNN_INFERENCE, f.ONEDNN_TRAINING)"
    for value, want in (("0", "False False"), ("off", "False False"), ("1", "True True"), ("maybe", "True True")):
        proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "IPT_ONEDNN": value},
                              capture_output=True, text=True, check=True)
        assert proc.stdout.strip() == want, value
        assert ("IPT_ONEDNN='maybe'" in proc.stderr) == (value == "maybe")


def test_cpu_inference_convolves_channels_last_and_returns_nchw() -> None:
    """Head/tail convolutions take channels-last inputs in CPU inference (faster oneDNN kernels); the result
    agrees with the NCHW convolution to fp32 rounding, and the model still returns contiguous NCHW images."""
    from ipt.core.model.blocks import conv

    torch.manual_seed(0)
    layer = conv(16, 16, 5).eval()
    x = torch.randn(2, 16, 24, 24) * 20
    with torch.inference_mode():
        fast = layer(x)
    assert fast.is_contiguous(memory_format=torch.channels_last) and not fast.is_contiguous()
    plain = torch.nn.functional.conv2d(x, layer.weight.detach(), layer.bias.detach(), padding=2)
    assert torch.allclose(fast, plain, atol=1e-3, rtol=1e-4)
    model = IPT(preset("tiny"), ["sr2"]).eval()
    with torch.inference_mode():
        y = model(torch.rand(2, 3, 48, 48) * 255, "sr2")
    assert y.is_contiguous() and y.shape == (2, 3, 96, 96)
    with torch.enable_grad():
        assert layer(x).is_contiguous()  # training keeps NCHW

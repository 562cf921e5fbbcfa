"""Linear layers with fused epilogues (bias, ReLU, residual add) and the CPU fast paths of IPT's GEMMs.

IPT spends ~75% of its time in the GEMMs of its linear layers. :func:`linear` is the one entry point the model
uses for them; it picks, per call:

* **CPU inference** (no autograd, fp32 or bf16 autocast): oneDNN on weights re-laid-out ("packed") once and cached
  in a :class:`PackedWeights`, with bias/ReLU/residual fused into the GEMM;
* **CPU training in fp32** (autograd on): :class:`OneDNNLinearFunction`, oneDNN for the forward product and for the
  input gradient (``grad @ W``, read through a transposed view of the weight, no copy), MKL for the weight
  gradient, where oneDNN is no faster; no packing, since weights change every step;
* **CPU int8 inference** (inside :func:`~ipt.core.model.int8.int8_inference`, no autograd, fp32 activations):
  oneDNN's quantized GEMM on weights quantized once per output channel (cached in the :class:`PackedWeights`) and
  uint8 activations with calibrated static scales, or per-patch dynamic ones (:mod:`ipt.core.model.int8`);
* **everything else** (CUDA, autocast training, ``torch.compile``, other dtypes): ``F.linear`` / ``addmm``.

Why: on the CPU we measured (AMD EPYC Zen 4, ``benchmarks/RESULTS.md``) oneDNN runs IPT's
``(1024 x 576) @ (576 x 2304)``-type products 5-20% faster than the default BLAS (MKL) and fuses the epilogues, which
saves whole passes over the activations; on other CPUs, check with ``benchmarks/ablate.py --only onednn,onednn_train``. All paths compute the same fp32 function up to summation order (tested in ``tests/test_fast_paths.py``).
The oneDNN ops are PyTorch's private ``torch.ops.mkldnn`` linear ops (the ones Inductor uses); they are feature-
detected, and the module-level switches below (or ``IPT_ONEDNN=0``) turn them off, for measuring or if a build
misbehaves.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from ipt.core.model import int8
from ipt.core.model.int8 import int8_available, int8_inference, quantize_activation  # noqa: F401 - public here too


def _env_switch(name: str, default: bool = True) -> bool:
    """An on/off environment variable; an unrecognised value keeps the default and says so."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return False
    if value in ("", "1", "on", "true", "yes"):
        return default if value == "" else True
    warnings.warn(f"{name}={value!r} is neither on (1/on/true/yes) nor off (0/off/false/no); using "
                  f"{'on' if default else 'off'}", stacklevel=2)
    return default


#: Use oneDNN with packed weights for CPU inference (no autograd). ``IPT_ONEDNN=0`` in the environment turns both
#: paths off for a whole run (the plain ``F.linear`` path then computes everything).
ONEDNN_INFERENCE = _env_switch("IPT_ONEDNN")
#: Use :class:`OneDNNLinearFunction` for fp32 CPU training (autograd on).
ONEDNN_TRAINING = ONEDNN_INFERENCE
_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
@contextlib.contextmanager
def onednn_paths(*, inference: bool | None = None, training: bool | None = None) -> Iterator[None]:
    """Switch the oneDNN paths on or off inside a ``with`` block (``None`` leaves a path as it is)."""
    global ONEDNN_INFERENCE, ONEDNN_TRAINING
    old = ONEDNN_INFERENCE, ONEDNN_TRAINING
    if inference is not None:
        ONEDNN_INFERENCE = inference
    if training is not None:
        ONEDNN_TRAINING = training
    try:
        yield
    finally:
        ONEDNN_INFERENCE, ONEDNN_TRAINING = old


def _onednn_inference_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the oneDNN inference path computes ``x``'s linear layers in, or None for another path."""
    if not (ONEDNN_INFERENCE and _HAS_ONEDNN_LINEAR) or x.device.type != "cpu" or torch.is_grad_enabled():
        return None
    if torch.compiler.is_compiling():
        return None
    if torch.is_autocast_enabled("cpu"):
        return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
    return x.dtype if x.dtype in (torch.float32, torch.bfloat16) else None


def _onednn_training_applies(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None
) -> bool:
    """True where :class:`OneDNNLinearFunction` computes this call (fp32 CPU with grad mode on, not compiled)."""
    if not (ONEDNN_TRAINING and _HAS_ONEDNN_LINEAR) or not torch.is_grad_enabled() or x.device.type != "cpu":
        return False
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu") or x.numel() == 0:
        return False
    tensors = [t for t in (x, weight, bias, residual) if t is not None]
    if any(t.dtype != torch.float32 or t.device.type != "cpu" or t.layout != torch.strided for t in tensors):
        return False
    if residual is not None and residual.shape != (*x.shape[:-1], weight.shape[0]):
        return False  # a broadcast residual is added outside the GEMM
    # Also when nothing requires grad (a frozen model outside no_grad): then it is just the unpacked oneDNN forward.
    return True


def _quantize_per_output_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (O, ...) as symmetric int8 per output channel: (q int8 of the same shape, contiguous; scales (O,)
    fp32 with ``weight ~= q * scale``, scale = max|w_o| / 127)."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=tuple(range(1, w.dim()))) / 127).clamp(min=1e-12)
    q = torch.round(w / scales.view(-1, *[1] * (w.dim() - 1))).clamp(-127, 127).to(torch.int8).contiguous()
    return q, scales


class PackedWeights:
    """oneDNN-packed copies of a module's weights for inference, rebuilt whenever a weight changes.

    Not part of the state dict; a deep copy starts empty (packed tensors are opaque). Costs one extra copy of the
    weights in memory while a model runs inference on CPU.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, torch.dtype], tuple[tuple[int, int, int], object]] = {}

    @staticmethod
    def _stamp(weight: torch.Tensor) -> tuple[int, int, int]:
        # new storage, in-place update (inference tensors have no version counter), another slice
        return weight.data_ptr(), 0 if weight.is_inference() else weight._version, weight.shape[0]

    def get(self, name: str, weight: torch.Tensor, dtype: torch.dtype, rows: int) -> torch.Tensor:
        stamp = self._stamp(weight)
        hit = self._entries.get((name, dtype))
        if hit is None or hit[0] != stamp:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous(), rows)
            hit = self._entries[(name, dtype)] = (stamp, packed)
        return hit[1]  # type: ignore[return-value]

    def get_int8(self, name: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``weight`` (M, K) quantized per output channel (symmetric int8: scale = max|w_m| / 127, zero point 0)
        and packed for oneDNN: (packed weight, scales (M,) fp32, zero points (M,) int32)."""
        stamp = self._stamp(weight)
        hit = self._entries.get((name, torch.int8))
        if hit is None or hit[0] != stamp:
            q, scales = _quantize_per_output_channel(weight)
            zeros = torch.zeros(q.shape[0], dtype=torch.int32)
            hit = self._entries[(name, torch.int8)] = (stamp, (torch.ops.onednn.qlinear_prepack(q, None), scales, zeros))
        return hit[1]  # type: ignore[return-value]

    def get_int8_conv(self, name: str, weight: torch.Tensor, geometry: tuple[list[int], list[int], list[int], int]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A convolution ``weight`` (O, I, kh, kw) with ``geometry`` (stride, padding, dilation, groups) quantized
        per output channel (symmetric int8) and packed for oneDNN's quantized convolution: (packed weight,
        scales (O,) fp32, zero points (O,) int64)."""
        stamp = self._stamp(weight)
        hit = self._entries.get((name, torch.qint8))
        if hit is None or hit[0] != stamp:
            q, scales = _quantize_per_output_channel(weight)
            zeros = torch.zeros(q.shape[0], dtype=torch.int64)
            # x_scale/x_zp only guide oneDNN's choice of weight layout; any input scale works at run time (tested).
            prepacked = torch.ops.onednn.qconv_prepack(q, scales, 1.0, 0, *geometry, None)
            hit = self._entries[(name, torch.qint8)] = (stamp, (prepacked, scales, zeros))
        return hit[1]  # type: ignore[return-value]

    def constant(self, name: str, inputs: tuple[torch.Tensor, ...], compute: "Callable[[], torch.Tensor]"
                 ) -> torch.Tensor:
        """``compute()``, cached under ``name`` until one of ``inputs`` changes (new storage or in-place write):
        for inference results that do not depend on the batch, like a projected task embedding."""
        stamp = tuple(self._stamp(t) for t in inputs)
        hit = self._entries.get((name, None))  # type: ignore[arg-type]
        if hit is None or hit[0] != stamp:
            hit = self._entries[(name, None)] = (stamp, compute())  # type: ignore[index]
        return hit[1]  # type: ignore[return-value]

    def clear(self) -> None:
        self._entries.clear()

    def __deepcopy__(self, memo: dict) -> "PackedWeights":
        return PackedWeights()

    def __getstate__(self) -> dict:
        return {"_entries": {}}


class OneDNNLinearFunction(torch.autograd.Function):
    """``[residual +] [relu](x @ weight.T [+ bias])`` in fp32 on CPU, forward and input gradient through oneDNN.

    ``relu`` and ``residual`` are exclusive (:func:`linear` adds a residual after a ReLU itself). The backward is
    written out: ``g = grad * (y > 0)`` for ReLU, ``dx = g @ W`` (oneDNN, transposed weight view), ``dW = g.T @ x``
    (MKL), ``db = g.sum(0)``, ``dresidual = grad``. First-order gradients only.
    """

    @staticmethod
    def forward(  # noqa: D102 - documented on the class
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        residual: torch.Tensor | None,
        relu: bool,
    ) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, k).contiguous()  # (R, K)
        w = weight.contiguous()  # (M, K)
        if residual is not None:
            r2 = residual.reshape(x2.shape[0], -1).contiguous()
            y = torch.ops.mkldnn._linear_pointwise.binary(x2, r2, w, bias, "add")  # (R, M)
        else:
            y = torch.ops.mkldnn._linear_pointwise(x2, w, bias, "relu" if relu else "none", [], "")
        ctx.save_for_backward(x2, w, y if relu else None)
        ctx.relu, ctx.lead = relu, lead
        ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
        return y.view(*lead, -1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # noqa: D102
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x2, w, y = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()  # (R, M)
        if ctx.relu:
            g = torch.ops.aten.threshold_backward(g, y, 0)
        need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
        dx = torch.ops.mkldnn._linear_pointwise(g, w.t(), None, "none", [], "").view(*ctx.lead, -1) if need_x else None
        dw = g.t().mm(x2) if need_w else None
        db = g.sum(0) if ctx.has_bias and need_b else None
        dr = grad if ctx.has_residual and need_r else None
        return dx, dw, db, dr, None


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    packed: PackedWeights | None = None,
    name: str = "",
) -> torch.Tensor:
    """``[residual +] [relu](x @ weight.T [+ bias])`` for x (..., K), weight (M, K) -> (..., M).

    Picks the path described in the module docstring. ``packed``/``name`` key the cached packed weight of the CPU
    inference path. Plain path: in full precision a bias-free product accumulates straight into the residual
    (``addmm`` with beta=1: one pass over the activations and one temporary fewer); under autocast the product is
    in half precision and the add stays separate, so the residual stream keeps fp32 (``addmm`` would round it).
    """
    if packed is not None:
        int8.observe(packed, name, x)
        if int8.applies(x):
            y = int8.int8_linear(x, weight, bias, relu, residual, packed, name)
            if y is not None:
                return y
    lead, k = x.shape[:-1], x.shape[-1]
    fast = _onednn_inference_dtype(x) if packed is not None else None
    if fast is not None:
        assert packed is not None
        x2 = x.reshape(-1, k).to(fast)
        w = packed.get(name, weight, fast, x2.shape[0])
        b = None if bias is None else bias.to(fast)
        if residual is not None and residual.dtype == fast and not relu:
            y = torch.ops.mkldnn._linear_pointwise.binary(x2, residual.reshape(x2.shape[0], -1), w, b, "add")
            return y.view(*lead, -1)
        y = torch.ops.mkldnn._linear_pointwise(x2, w, b, "relu" if relu else "none", [], "").view(*lead, -1)
        return y if residual is None else residual + y
    if _onednn_training_applies(x, weight, bias, residual):
        if relu and residual is not None:
            return residual + OneDNNLinearFunction.apply(x, weight, bias, None, True)
        return OneDNNLinearFunction.apply(x, weight, bias, residual, relu)
    half = torch.is_autocast_enabled(x.device.type)
    if residual is not None and bias is None and not relu and not half and residual.dtype == x.dtype:
        y = torch.addmm(residual.reshape(-1, residual.shape[-1]), x.reshape(-1, k), weight.t())
        return y.view(residual.shape)
    y = F.linear(x, weight, bias)
    if relu:
        y = F.relu(y, inplace=True)  # in place on the GEMM's fresh output (its backward needs only the result)
    return y if residual is None else residual + y

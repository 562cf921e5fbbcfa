"""int8 CPU inference (``--dtype int8``): oneDNN's quantized GEMMs and convolutions with calibrated activation scales.

Weights are quantized once per output channel (symmetric int8, scale = max|w_m| / 127, cached in the module's
:class:`~ipt.core.model.fused_linear.PackedWeights`). Activations are asymmetric uint8 (``x ~= (q - zp) * scale``)
over a range that comes from:

* a **calibration table**, :class:`ActivationRanges`: the min/max of every linear layer's (and ResBlock
  convolution's) input seen while the fp32 model ran a few patches (:meth:`ipt.core.model.IPT.calibrate_int8`;
  :mod:`ipt.core.inference.int8_calibration` makes them from the built-in photos and the task's own degradation,
  and widens every range 1.5x). Patches inside a layer's range share its static scale, so the layer is one GEMM
  over the batch, the MLP's first layer writes uint8 straight for the second (ReLU and quantization in the GEMM's
  epilogue), and residual adds are a post-op of the GEMM;
* the patch itself, where it goes beyond the calibrated range: that patch is quantized over the union of both
  ranges (its own scale, no clipping) and the layer runs patch by patch, each GEMM accumulating into its rows of
  the output (oneDNN's ``sum`` post-op); an MLP whose uint8 hand-over reaches 255 (possibly clipped) is recomputed
  for that patch through the two layers one by one. Without a table every patch uses its own range (dynamic).

A patch's result depends on that patch only, never on its batch-mates (int32 accumulation is exact and the
epilogues are elementwise): a tile restores to the same bits alone or batched with tiles of other images
(``tests/test_int8.py``). LayerNorm, attention, the first head convolution (the 8-bit image itself) and the tail
stay fp32.

Measured on this 2-core Zen 4 VM (paper preset, 4 patches per call, variants interleaved in one process, medians
of 7; ``benchmarks/RESULTS.md``): per-patch dynamic scales 0.743 s per call (2 threads, wall), static scales
0.643 s, with the MLP's uint8 hand-over 0.623 s, with int8 ResBlock convolutions 0.573 s. An int8 attention from
``torch._int_mm`` plus an unfused softmax measured no faster than fp32 ``scaled_dot_product_attention`` (4.9 vs
4.7 ms for (4, 12, 256, 48)).

The kernels are PyTorch's ``onednn::qlinear_pointwise``/``qconv2d_pointwise`` ops (the ones Inductor's x86 int8
path uses); activations take ``torch.quantize_per_tensor`` (deprecated in favour of torchao, whose CPU int8
kernels need ``torch.compile``; it is still the one fast eager quantization kernel in torch 2.14).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.model.fused_linear import PackedWeights

__all__ = [
    "ActivationRanges", "int8_available", "int8_inference", "int8_active", "use_ranges", "observing",
    "quantize_activation", "int8_linear", "int8_mlp", "int8_conv2d",
]

_HAS_ONEDNN_INT8 = torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
# Per thread (context variables): two restorers in two threads, one int8 and one not, or two tasks, do not see
# each other's switches or tables.
_INT8: ContextVar[bool] = ContextVar("ipt_int8", default=False)  # set by int8_inference()
_RANGES: ContextVar["ActivationRanges | None"] = ContextVar("ipt_int8_ranges", default=None)  # use_ranges()
_OBSERVER: ContextVar["ActivationRanges | None"] = ContextVar("ipt_int8_observer", default=None)  # observing()


class ActivationRanges:
    """Min/max of each linear layer's (and int8-capable convolution's) input over the calibration patches of one
    (model, task).

    Keys are (the layer's :class:`PackedWeights`, its name), so a table belongs to one model instance. A layer
    never observed has no entry and quantizes each patch over its own range (dynamic). ``margin`` multiplies both ends of every range (which
    always includes 0) when scales are derived: headroom for inputs beyond the calibration patches, at the cost of
    a coarser step (1.0 = the observed range).
    """

    def __init__(self, margin: float = 1.0) -> None:
        if not margin >= 1.0:
            raise ValueError(f"margin must be >= 1, got {margin}")
        self.margin = margin
        self._ranges: dict[tuple[object, str], tuple[float, float]] = {}
        self._scaled: dict[tuple[object, str], tuple[float, float]] = {}
        self.patches = 0  # calibration patches seen (for reports)

    def __len__(self) -> int:
        return len(self._ranges)

    def observe(self, packed: "PackedWeights", name: str, x: torch.Tensor) -> None:
        """Widen ``name``'s range to include ``x``'s finite values (non-finite inputs are ignored)."""
        finite = x if bool(torch.isfinite(x).all()) else x[torch.isfinite(x)]
        if finite.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(finite.float()))
        old = self._ranges.get((packed, name))
        self._ranges[(packed, name)] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        self._scaled.pop((packed, name), None)

    def range(self, packed: "PackedWeights", name: str) -> tuple[float, float] | None:
        """The calibrated (min, max) of ``name``'s input, widened to include 0 and by ``margin``, or None if the
        layer was not calibrated."""
        key = (packed, name)
        hit = self._scaled.get(key)
        if hit is None:
            rng = self._ranges.get(key)
            if rng is None:
                return None
            hit = self._scaled[key] = (min(rng[0], 0.0) * self.margin, max(rng[1], 0.0) * self.margin)
        return hit


def int8_available() -> bool:
    """True where this PyTorch build has oneDNN's quantized linear kernels (x86 CPUs with oneDNN)."""
    return _HAS_ONEDNN_INT8


@contextlib.contextmanager
def int8_inference(enabled: bool = True) -> Iterator[None]:
    """Run the linear layers (and the ResBlock convolutions) of CPU inference (no autograd, fp32) in int8 inside a
    ``with`` block.

    Raises ``RuntimeError`` when this build has no oneDNN int8 kernels. LayerNorm, attention and the other
    convolutions keep fp32. Layers use the calibration table of the running (model, task) where one exists
    (:func:`use_ranges`), else dynamic per-patch scales (module docstring).
    """
    if enabled and not _HAS_ONEDNN_INT8:
        raise RuntimeError("int8 inference needs PyTorch with oneDNN's quantized linear (onednn::qlinear_pointwise) "
                           "on an x86 CPU; this build has none")
    token = _INT8.set(enabled)
    try:
        yield
    finally:
        _INT8.reset(token)


def int8_active() -> bool:
    """True inside :func:`int8_inference` (whether or not a given call then qualifies, see :func:`applies`)."""
    return not torch.compiler.is_compiling() and _INT8.get()


@contextlib.contextmanager
def use_ranges(ranges: ActivationRanges | None) -> Iterator[None]:
    """Make ``ranges`` the calibration table the int8 layers read inside the block (None: dynamic scales)."""
    token = _RANGES.set(ranges)
    try:
        yield
    finally:
        _RANGES.reset(token)


@contextlib.contextmanager
def observing(ranges: ActivationRanges) -> Iterator[ActivationRanges]:
    """Calibration: inside the block, every linear layer with a :class:`PackedWeights` records its input's range
    into ``ranges`` (the layers compute in fp32 as usual; int8 is switched off)."""
    token = _OBSERVER.set(ranges)
    try:
        with int8_inference(False):
            yield ranges
    finally:
        _OBSERVER.reset(token)


def observe(packed: "PackedWeights | None", name: str, x: torch.Tensor) -> None:
    """Record ``x`` as the input of layer ``name`` if a calibration pass is running (else nothing)."""
    if torch.compiler.is_compiling():
        return
    observer = _OBSERVER.get()
    if observer is not None and packed is not None:
        observer.observe(packed, name, x)


def applies(x: torch.Tensor) -> bool:
    """True where the int8 path computes a linear layer on ``x`` (CPU fp32 inference inside the context)."""
    if torch.compiler.is_compiling() or not _INT8.get() or x.device.type != "cpu" or torch.is_grad_enabled():
        return False
    return x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") and x.numel() > 0


def _uint8_params(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric uint8 (scale, zero point) covering [lo, hi] widened to include 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 if hi > lo else 1.0
    return scale, min(255, max(0, round(-lo / scale)))


def _as_uint8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``clamp(round(x / scale) + zero_point, 0, 255)`` as a plain uint8 tensor of ``x``'s shape."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated", category=UserWarning)
        q = torch.quantize_per_tensor(x.contiguous(), scale, zero_point, torch.quint8)
    # The quantized tensor's bytes as a plain uint8 tensor, without the copy ``int_repr()`` makes.
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), 0, q.shape, q.stride())


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, float, int] | None:
    """``x`` (fp32, any shape) as asymmetric uint8 over its own range (which always includes 0):
    ``x ~= (q - zero_point) * scale``; returns (q, scale, zero_point), or None if ``x`` is not finite."""
    lo, hi = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    scale, zero_point = _uint8_params(lo, hi)
    return _as_uint8(x, scale, zero_point), scale, zero_point


def _gemm(q: torch.Tensor, scale: float, zp: int, packed_w: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
          bias: torch.Tensor | None, relu: bool, residual: torch.Tensor | None,
          out_qparams: tuple[float, int] | None = None) -> torch.Tensor:
    """One oneDNN int8 GEMM: uint8 ``q`` (R, K) x packed int8 weight -> (R, M) fp32 (or uint8 at ``out_qparams``),
    with bias, ReLU or ``+ residual`` (R, M) fused."""
    w, w_scales, w_zeros = packed_w
    post = "relu" if relu else "none"
    if out_qparams is not None:
        return torch.ops.onednn.qlinear_pointwise(q, scale, zp, w, w_scales, w_zeros, bias, out_qparams[0],
                                                  out_qparams[1], None, post, [], "")
    if residual is not None:
        return torch.ops.onednn.qlinear_pointwise.binary(q, scale, zp, w, w_scales, w_zeros, residual, bias, 1.0, 0,
                                                         torch.float32, 1.0, 0, "add", 1.0, post, [], "")
    return torch.ops.onednn.qlinear_pointwise(q, scale, zp, w, w_scales, w_zeros, bias, 1.0, 0, torch.float32, post,
                                              [], "")


def _samples(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., N, K) as (S, N, K): one entry per patch of the batch (a 2-D ``x`` is one sample)."""
    return x.reshape(-1, *x.shape[-2:]) if x.dim() >= 3 else x.reshape(1, -1, x.shape[-1])


def _sample_qparams(samples: torch.Tensor, calibrated: tuple[float, float] | None
                    ) -> list[tuple[float, int]] | None:
    """Each sample's uint8 (scale, zero point): over the union of its own range and the calibrated one (so a
    sample inside the calibrated range gets exactly the static scale), or None if a value is not finite."""
    flat = samples.reshape(samples.shape[0], -1)
    los, his = flat.amin(dim=1).tolist(), flat.amax(dim=1).tolist()  # (aminmax with dim= is ~20x slower here)
    if not all(math.isfinite(v) for v in los + his):
        return None
    if calibrated is not None:
        los, his = [min(v, calibrated[0]) for v in los], [max(v, calibrated[1]) for v in his]
    return [_uint8_params(a, b) for a, b in zip(los, his)]


def int8_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool, residual: torch.Tensor | None,
    packed: "PackedWeights", name: str,
) -> torch.Tensor | None:
    """``[residual +] [relu](x @ weight.T [+ bias])`` in int8 for ``x`` (..., N, K) fp32 -> (..., N, M) fp32, or
    None when ``x`` has a non-finite value (the caller then computes it in fp32).

    Each patch (sample of the batch) is quantized over the union of its own range and the layer's calibrated
    range, if the active table has one: with calibration, patches inside the range share the static scale and
    the layer is one GEMM over the batch; a patch beyond it gets its own wider scale (no clipping) and the batch
    runs patch by patch. Either way a patch's result depends on that patch only (int32 accumulation is exact and
    the epilogue is elementwise).
    """
    m = weight.shape[0]
    samples = _samples(x)
    table = _RANGES.get()
    calibrated = table.range(packed, name) if table is not None else None
    qparams = _sample_qparams(samples, calibrated)
    if qparams is None:
        return None
    b = None if bias is None else bias.float()
    packed_w = packed.get_int8(name, weight)
    fuse_residual = residual is not None and not relu and residual.dtype == torch.float32 \
        and residual.shape == (*x.shape[:-1], m)
    r = residual.reshape(samples.shape[0], samples.shape[1], m) if fuse_residual else None  # type: ignore[union-attr]
    y = _samples_gemm(samples, qparams, packed_w, b, relu, r).view(*x.shape[:-1], m)
    return y if residual is None or fuse_residual else residual + y


def _samples_gemm(samples: torch.Tensor, qparams: list[tuple[float, int]],
                  packed_w: tuple[torch.Tensor, torch.Tensor, torch.Tensor], bias: torch.Tensor | None, relu: bool,
                  residual: torch.Tensor | None) -> torch.Tensor:
    """(S, N, K) fp32 samples, each quantized at its own ``qparams`` -> (S, N, M) fp32: one GEMM when all share
    one scale, else one per sample accumulating into its rows of the output (oneDNN's ``sum`` post-op)."""
    n_samples, n, k = samples.shape
    m = packed_w[1].shape[0]
    if all(q == qparams[0] for q in qparams):
        r2 = None if residual is None else residual.reshape(n_samples * n, m).contiguous()
        return _gemm(_as_uint8(samples.reshape(-1, k), *qparams[0]), *qparams[0], packed_w, bias, relu, r2
                     ).view(n_samples, n, m)
    w, w_scales, w_zeros = packed_w
    if residual is not None:
        out = residual.reshape(n_samples, n, m).clone()
    else:
        out = torch.zeros(n_samples, n, m, dtype=torch.float32, device=samples.device)
    for i, (scale, zp) in enumerate(qparams):
        torch.ops.onednn.qlinear_pointwise.binary(
            _as_uint8(samples[i], scale, zp), scale, zp, w, w_scales, w_zeros, out[i], bias, 1.0, 0, torch.float32,
            1.0, 0, "sum", 1.0, "relu" if relu else "none", [], "")
    return out


def int8_mlp(
    x: torch.Tensor, fc1: tuple[torch.Tensor, torch.Tensor | None], fc2: tuple[torch.Tensor, torch.Tensor | None],
    residual: torch.Tensor, packed: "PackedWeights", name: str,
) -> torch.Tensor | None:
    """``residual + fc2(relu(fc1(x)))`` (x (..., N, K), residual (..., N, D) fp32) with calibrated static scales:
    fc1's GEMM writes uint8 at fc2's calibrated input scale (ReLU and quantization in its epilogue) and fc2 reads
    it directly, adding ``residual``. A patch whose fc1 input is beyond its calibrated range, or whose hidden
    activations reach the top of fc2's range (255: possibly clipped), is recomputed alone through
    :func:`int8_linear` twice (no clipping). None where the table does not cover both layers or ``x`` is not
    finite (the caller then runs the layers one by one).
    """
    table = _RANGES.get()
    if table is None or not applies(x) or residual.shape[:-1] != x.shape[:-1] or residual.dtype != torch.float32:
        return None
    (w1, b1), (w2, b2) = fc1, fc2
    c1, c2 = table.range(packed, f"{name}.fc1"), table.range(packed, f"{name}.fc2")
    if c1 is None or c2 is None:
        return None
    samples = _samples(x)
    n_samples, n, k = samples.shape
    qparams = _sample_qparams(samples, c1)
    if qparams is None:
        return None
    q1, q2 = _uint8_params(*c1), _uint8_params(*c2)
    inside = [i for i, q in enumerate(qparams) if q == q1]
    residual3 = residual.reshape(n_samples, n, -1)
    redo = [i for i in range(n_samples) if qparams[i] != q1]
    out: torch.Tensor | None = None  # assembled only when some patch is recomputed
    if inside:
        part = samples if len(inside) == n_samples else samples[inside]
        hidden = _gemm(_as_uint8(part.reshape(-1, k), *q1), *q1, packed.get_int8(f"{name}.fc1", w1),
                       None if b1 is None else b1.float(), True, None, out_qparams=q2)
        r = residual3 if len(inside) == n_samples else residual3[inside]
        y = _gemm(hidden, *q2, packed.get_int8(f"{name}.fc2", w2), None if b2 is None else b2.float(), False,
                  r.reshape(-1, r.shape[-1]).contiguous()).view(len(inside), n, -1)
        saturated = [v == 255 for v in hidden.view(len(inside), -1).amax(dim=1).tolist()]
        if len(inside) == n_samples and not any(saturated):
            return y.view(*x.shape[:-1], -1)
        out = torch.empty_like(residual3)
        for j, i in enumerate(inside):
            if saturated[j]:
                redo.append(i)
            else:
                out[i] = y[j]
    if out is None:
        out = torch.empty_like(residual3)
    for i in redo:
        h = int8_linear(samples[i : i + 1], w1, b1, True, None, packed, f"{name}.fc1")
        y_i = None if h is None else int8_linear(h, w2, b2, False, residual3[i : i + 1], packed, f"{name}.fc2")
        if y_i is None:  # pragma: no cover - finite input and weights give finite hidden activations
            return None
        out[i] = y_i[0]
    return out.view(*x.shape[:-1], -1)


def int8_conv2d(conv: torch.nn.Conv2d, x: torch.Tensor, packed: "PackedWeights", relu: bool = False
                ) -> torch.Tensor | None:
    """``[relu](conv(x))`` in int8 for ``x`` (B, C, H, W) fp32 -> (B, C', H', W') fp32 in channels-last memory
    format, through oneDNN's quantized convolution (``onednn::qconv2d_pointwise``, uint8 activations in
    channels-last, int8 weights per output channel, cached in ``packed``). Scales as :func:`int8_linear`: the union
    of each patch's range and the calibrated one (one call when all patches share it). None where the layer is
    not a plain zero-padded convolution or ``x`` is not finite (the caller then runs it in fp32).

    Measured (2 threads, (4, 64, 48, 48), 5x5, 64 -> 64): fp32 12.7 ms (8.7 ms channels-last), int8 2.5 ms
    including the quantization of the input.
    """
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str) or x.dim() != 4:
        return None
    table = _RANGES.get()
    qparams = _sample_qparams(x, table.range(packed, "input") if table is not None else None)
    if qparams is None:
        return None
    geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    w, w_scales, w_zeros = packed.get_int8_conv("weight", conv.weight, geometry)
    bias = None if conv.bias is None else conv.bias.float()
    x = x.contiguous(memory_format=torch.channels_last)

    def run(part: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
        return torch.ops.onednn.qconv2d_pointwise(_as_uint8(part, scale, zp), scale, zp, w, w_scales, w_zeros, bias,
                                                  *geometry, 1.0, 0, torch.float32, "relu" if relu else "none",
                                                  [], "")

    if all(q == qparams[0] for q in qparams):
        return run(x, *qparams[0])
    return torch.cat([run(x[i : i + 1], *q) for i, q in enumerate(qparams)])

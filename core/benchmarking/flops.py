"""FLOPs of one patch through IPT: counted on the real model by torch, and the paper preset's closed form.

FLOP/s figures and MFU need the work per patch. :func:`counted_flops_per_patch` lets
``torch.utils.flop_counter.FlopCounterMode`` count the model itself (so any task's head and tail, also a
third-party plugin's, are counted as they are built); :func:`flops_per_patch` is the closed form for the built-in
head/tail layout, which the tests check against the counter. 2 FLOPs per multiply-add; elementwise ops,
LayerNorm and softmax are not counted.
"""

from __future__ import annotations

import math

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ipt.core.model.config import ModelConfig
from ipt.core.model.fused_linear import onednn_paths
from ipt.core.model.ipt import IPT

__all__ = ["flops_per_patch", "train_flops_per_patch", "counted_flops_per_patch"]


def _conv_flops(c_in: int, c_out: int, k: int, pixels: int) -> int:
    return 2 * c_in * c_out * k * k * pixels


def flops_per_patch(cfg: ModelConfig, scale: int = 1) -> int:
    """FLOPs (2 per MAC) of one ``patch_size`` patch through the built-in head, the body and the built-in tail.

    Convolutions, linear layers and the two attention matmuls (QK^T, AV). The task-embedding projection, done
    once per call and not per patch, is left out, so the count equals the official model's.
    Paper preset, scale 1: 65.9 GFLOP (33 GMAC).
    """
    c, k, s = cfg.n_feats, cfg.res_kernel, cfg.patch_size
    n, d, m = cfg.num_tokens, cfg.embed_dim, cfg.mlp_dim
    px = s * s
    head = _conv_flops(3, c, 3, px) + 4 * _conv_flops(c, c, k, px)  # conv3x3 + 2 ResBlocks of 2 convs
    lin = 2 * n * d * d  # one (N, D) x (D, D) projection
    attn = 2 * (2 * n * n * d)  # QK^T and AV over all heads
    mlp = 2 * (2 * n * d * m)  # fc1 + fc2
    attention = 4 * lin + attn  # q, k, v, out projections
    encoder = attention + mlp
    decoder = 2 * attention + mlp  # self- and cross-attention
    body = lin + cfg.num_enc_layers * encoder + cfg.num_dec_layers * decoder + mlp  # linear_encoding, mlp_head
    tail, side = 0, s
    if scale & (scale - 1) == 0:  # the official Upsampler: log2(s) conv + PixelShuffle(2) stages, or one x3 stage
        for _ in range(int(math.log2(scale))):
            tail += _conv_flops(c, 4 * c, 3, side * side)
            side *= 2
    elif scale == 3:
        tail += _conv_flops(c, 9 * c, 3, side * side)
        side *= 3
    tail += _conv_flops(c, 3, 3, side * side)
    return head + body + tail


def train_flops_per_patch(forward_flops: int) -> int:
    """Forward + backward FLOPs of one patch (backward = 2x forward: gradients of inputs and of weights)."""
    return 3 * forward_flops


def counted_flops_per_patch(model: IPT, task: str) -> int:
    """FLOPs of one patch of ``task`` as ``FlopCounterMode`` counts them on ``model`` (its device and dtype).

    Counted for a batch of 2 minus a batch of 1, so per-call work (the task-embedding projection) cancels. The
    plain aten paths run while counting (the counter does not see oneDNN's linear kernels nor the CPU flash
    attention kernel); they compute the same products.
    """
    p = next(model.parameters())
    size = model.config.patch_size
    counts = []
    for batch in (1, 2):
        x = torch.rand(batch, 3, size, size, device=p.device, dtype=p.dtype) * model.config.rgb_range
        model.body.clear_inference_cache()  # both calls project the task embedding (inference caches it)
        with torch.no_grad(), onednn_paths(inference=False, training=False), sdpa_kernel(SDPBackend.MATH), \
                FlopCounterMode(display=False) as counter:
            model(x, task)
        counts.append(counter.get_total_flops())
    return counts[1] - counts[0]

"""Convolutional building blocks of IPT heads and tails (official Pretrained-IPT layout, so weights map 1:1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ipt.core.model import int8
from ipt.core.model.config import ModelConfig
from ipt.core.model.fused_linear import PackedWeights


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict names) that also runs in calibrated int8 CPU inference
    (:func:`ipt.core.model.int8.int8_conv2d`), records its input range during an int8 calibration pass, and in
    CPU inference computes on channels-last memory (:func:`_channels_last_applies`). ``relu=True`` fuses a ReLU
    into the convolution."""

    def __init__(self, *args, int8_inference: bool = False, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.packed = PackedWeights()
        self.int8_inference = int8_inference

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:  # noqa: D102
        int8.observe(self.packed, "input", x)
        if self.int8_inference and int8.applies(x):
            y = int8.int8_conv2d(self, x, self.packed, relu=relu)
            if y is not None:
                return y
        if _channels_last_applies(x):
            x = x.contiguous(memory_format=torch.channels_last)
        y = super().forward(x)
        return torch.relu_(y) if relu else y


def _channels_last_applies(x: torch.Tensor) -> bool:
    """CPU inference runs convolutions on channels-last inputs: oneDNN's NHWC kernels measured faster here
    (5x5, 64 -> 64 on (4, 64, 48, 48): 8.7 vs 12.7 ms; restoring a 481x321 image with the bundled model 4-10%
    faster); outputs agree to fp32 rounding. Not while tracing/exporting/compiling or with autograd on."""
    if x.device.type != "cpu" or x.dim() != 4 or torch.is_grad_enabled():
        return False
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def conv(in_ch: int, out_ch: int, kernel: int, int8_inference: bool = False) -> Conv2d:
    """Same-padded convolution with bias; ``int8_inference``: it runs in int8 under calibrated int8 inference."""
    return Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=True, int8_inference=int8_inference)


class ResBlock(nn.Module):
    """conv -> ReLU -> conv plus identity, no normalisation (EDSR style)."""

    def __init__(self, channels: int, kernel: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels, kernel, int8_inference=True), nn.ReLU(inplace=True),
                                  conv(channels, channels, kernel, int8_inference=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if int8.int8_active():  # the ReLU fused into the first convolution's int8 epilogue
            first, _, second = self.body
            return second(first(x, relu=True)) + x
        return self.body(x) + x


class Upsampler(nn.Sequential):
    """Sub-pixel upsampling: (conv -> PixelShuffle(2)) x log2(scale), or conv -> PixelShuffle(3); empty for 1."""

    def __init__(self, scale: int, channels: int) -> None:
        layers: list[nn.Module] = []
        if scale == 1:
            pass
        elif scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [conv(channels, 4 * channels, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [conv(channels, 9 * channels, 3), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"unsupported upsampling scale {scale}: use 1, 3 or a power of two")
        super().__init__(*layers)


def build_head(cfg: ModelConfig, in_channels: int = 3) -> nn.Sequential:
    """The IPT head: conv3x3(3 -> n_feats) and two ResBlocks (official ``head.i``)."""
    return nn.Sequential(
        conv(in_channels, cfg.n_feats, 3),
        ResBlock(cfg.n_feats, cfg.res_kernel),
        ResBlock(cfg.n_feats, cfg.res_kernel),
    )


def build_tail(cfg: ModelConfig, scale: int, out_channels: int = 3) -> nn.Sequential:
    """The IPT tail: upsampler for ``scale`` then conv3x3(n_feats -> 3) (official ``tail.i``)."""
    return nn.Sequential(Upsampler(scale, cfg.n_feats), conv(cfg.n_feats, out_channels, 3))

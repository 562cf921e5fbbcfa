"""Convolutional building blocks of IPT heads and tails (official Pretrained-IPT layout, so weights map 1:1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ipt.core.model.config import ModelConfig


def conv(in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
    """Same-padded convolution with bias."""
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=True)


class ResBlock(nn.Module):
    """conv -> ReLU -> conv plus identity, no normalisation (EDSR style)."""

    def __init__(self, channels: int, kernel: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels, kernel), nn.ReLU(inplace=True), conv(channels, channels, kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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

"""The network only: configuration, blocks, the IPT module and its GEMM paths (paper Sec. 3.1, Eq. 1-4).

``from ipt.core.model import IPT, build_model, ModelConfig, preset, build_head, build_tail`` is the stable import
for users and plugin authors. Nothing here reads files, parses flags or knows about training.
"""

from ipt.core.model.blocks import ResBlock, Upsampler, build_head, build_tail, conv
from ipt.core.model.config import OFFICIAL_RGB_MEAN, PRESETS, ModelConfig, preset
from ipt.core.model.ipt import IPT, IPTBody, UnknownModelTaskError, build_model

__all__ = [
    "IPT", "IPTBody", "UnknownModelTaskError", "build_model",
    "ModelConfig", "PRESETS", "OFFICIAL_RGB_MEAN", "preset",
    "ResBlock", "Upsampler", "build_head", "build_tail", "conv",
]

"""Model architecture configuration (pydantic) and the named presets ``paper``, ``small``, ``tiny``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Official RGB mean of DIV2K on the 0-1 scale (subtracted before the head, added after the tail).
OFFICIAL_RGB_MEAN = (0.4488, 0.4371, 0.4040)
MAX_EMBED_DIM = 16384


class ModelConfig(BaseModel):
    """Architecture of the shared IPT body and of the default heads/tails.

    Token dim ``D = n_feats * patch_dim**2``; tokens per 48x48 patch ``N = (patch_size / patch_dim)**2``.
    Every size has an upper bound (16x to 10x the paper's, ``D <= 16384``), so a hostile or mistyped
    ``config.json`` is refused before anything is allocated.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_feats: int = Field(64, ge=1, le=1024, description="Feature channels of heads, body and tails.")
    patch_size: int = Field(48, ge=1, le=512, description="Side of the square input the body accepts.")
    patch_dim: int = Field(3, ge=1, le=32, description="Side of the square feature patch that becomes one token.")
    num_heads: int = Field(12, ge=1, le=256, description="Attention heads.")
    num_enc_layers: int = Field(12, ge=0, le=128, description="Transformer encoder layers.")
    num_dec_layers: int = Field(12, ge=0, le=128, description="Transformer decoder layers.")
    mlp_ratio: float = Field(4.0, gt=0, le=16, description="FFN hidden size as a multiple of the token dim.")
    res_kernel: int = Field(5, ge=1, le=31, description="Kernel size of the head ResBlock convs (odd).")
    rgb_range: float = Field(255.0, gt=0, description="Pixel value range of inputs/outputs.")
    rgb_mean: tuple[float, float, float] = Field(OFFICIAL_RGB_MEAN, description="Mean shift on the 0-1 scale.")
    dropout: float = Field(0.0, ge=0, lt=1)
    layer_norm_eps: float = Field(1e-5, gt=0)

    @model_validator(mode="after")
    def _check_shapes(self) -> "ModelConfig":
        if self.patch_size % self.patch_dim:
            raise ValueError(
                f"patch_size ({self.patch_size}) must be divisible by patch_dim ({self.patch_dim}): "
                "the feature map is cut into patch_dim x patch_dim tokens"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide the token dim n_feats*patch_dim^2 = {self.embed_dim}"
            )
        if self.embed_dim > MAX_EMBED_DIM:
            raise ValueError(
                f"token dim n_feats*patch_dim^2 = {self.embed_dim} is over the limit of {MAX_EMBED_DIM} "
                "(the paper's model uses 576)"
            )
        if self.res_kernel % 2 == 0:
            raise ValueError(f"res_kernel ({self.res_kernel}) must be odd")
        return self

    @property
    def embed_dim(self) -> int:
        return self.n_feats * self.patch_dim**2

    @property
    def num_tokens(self) -> int:
        return (self.patch_size // self.patch_dim) ** 2

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


PRESETS: dict[str, dict[str, Any]] = {
    # The paper / official Pretrained-IPT layout (~115.6M body parameters).
    "paper": {},
    # A quarter-width, half-depth model: trains in hours on a GPU, minutes per hundred steps on a CPU.
    "small": {"n_feats": 32, "num_heads": 6, "num_enc_layers": 4, "num_dec_layers": 4},
    # CPU-trainable in minutes; used by tests and the bundled model.
    "tiny": {"n_feats": 16, "num_heads": 4, "num_enc_layers": 2, "num_dec_layers": 2},
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The :class:`ModelConfig` of preset ``name`` with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})

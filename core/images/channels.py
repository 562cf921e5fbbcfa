"""Grey and alpha images through a colour (RGB) model: what goes in, and how the result is brought back.

* Grey: the grey plane is repeated to RGB for the network and the restored RGB is reduced back to one plane by
  :func:`grey_plane`, so R = G = B holds exactly in the output (a colour model restores three identical channels
  slightly differently: up to 26 levels apart on the bundled model, i.e. false colour on a black-and-white photo).
  The reduction is the channel mean. Measured with the bundled model on 9 grey 120x120 crops (camera, Set5 and
  Set14 photos as L; degraded as grey; PSNR on the grey plane, SR border = scale), mean vs BT.601 luma vs green,
  dB: sr2 31.753/31.742/31.695, sr3 28.870/28.865/28.846, sr4 27.234/27.231/27.200, denoise30
  24.956/24.968/24.881, denoise50 23.118/23.164/23.123, derain 32.788/32.751/32.636. Mean and luma are within
  0.05 dB of each other (mean ahead on four tasks); the mean is kept as the simpler, symmetric choice.
* Alpha: colour stored under fully transparent pixels is invisible to the user but visible to the network, which
  spreads it over the visible edge (a dark halo around stickers whose hidden pixels are black).
  :func:`fill_transparent` replaces it by an extension of the visible colour (a push-pull fill: average the visible
  pixels, weighted by opacity, over a 2x pyramid, then fill hidden pixels from the coarser level), so the output's visible pixels do not
  depend on hidden data. The alpha channel itself is resized with the image by
  :func:`ipt.core.images.io.resize_alpha`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fill_transparent", "grey_plane"]


def grey_plane(rgb: Tensor) -> Tensor:
    """``(3, H, W)`` -> ``(1, H, W)``: the mean of the three channels (same scale as the input)."""
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"grey_plane expects (3, H, W), got {tuple(rgb.shape)}")
    return rgb.mean(dim=0, keepdim=True)


def _pull_push(colour: Tensor, weight: Tensor) -> Tensor:
    """Fill the pixels of ``colour`` ``(1, C, H, W)`` whose ``weight`` ``(1, 1, H, W)`` is 0 from a coarser
    weighted average (recursively), keeping pixels of positive weight unchanged."""
    h, w = colour.shape[-2:]
    if bool((weight > 0).all()) or (h == 1 and w == 1):
        return colour
    ph, pw = h % 2, w % 2
    if ph or pw:  # an even size for 2x2 pooling (the added row/column has weight 0)
        colour = F.pad(colour, (0, pw, 0, ph))
        weight = F.pad(weight, (0, pw, 0, ph))
    coarse_weight = F.avg_pool2d(weight, 2)
    coarse = F.avg_pool2d(colour * weight, 2) / coarse_weight.clamp_min(1e-12)
    filled = _pull_push(coarse, coarse_weight)
    up = F.interpolate(filled, scale_factor=2, mode="bilinear", align_corners=False)
    out = torch.where(weight > 0, colour, up)
    return out[..., :h, :w]


@torch.no_grad()
def fill_transparent(rgb: Tensor, alpha: Tensor | None) -> Tensor:
    """``rgb`` ``(3, H, W)`` with the colour of fully transparent pixels (``alpha == 0``) replaced by an extension
    of the nearby visible colour, weighted by opacity (alpha ``(H, W)`` on 0-255); pixels with any opacity keep
    their colour. Returns ``rgb`` itself when there is no alpha, no fully transparent pixel or nothing visible."""
    if alpha is None:
        return rgb
    weight = (alpha.float().clamp(0, 255) / 255.0)[None, None]
    if bool((weight > 0).all()) or not bool((weight > 0).any()):
        return rgb
    return _pull_push(rgb.float()[None], weight)[0].to(rgb.dtype)

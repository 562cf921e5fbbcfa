"""Patches from decoded images: aligned random crops (single images and input/target pairs), the dihedral
flips/rotations, and colour augmentation of clean patches. Every random choice comes from the step's generator.
"""

from __future__ import annotations

import torch

__all__ = ["randint", "dihedral", "random_crop", "paired_crop", "color_augment", "COLOR_AUGMENT"]

# Colour augmentation of clean patches (--color-augment), each part drawn independently per patch:
COLOR_AUGMENT = {
    "permute_p": 0.5,  # probability of permuting the RGB channels (one of the 5 non-identity orders, uniform)
    "saturation_p": 0.5,  # probability of scaling the saturation ...
    "saturation": (0.5, 1.5),  # ... by a factor uniform in this range, around the BT.601 luma, clamped to 0-255
}
_PERMUTATIONS = torch.tensor([[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # BT.601 weights of R, G, B (sum 1: grey stays grey)


def randint(high: int, generator: torch.Generator) -> int:
    """One integer uniform in ``[0, high)`` from ``generator``."""
    return int(torch.randint(high, (1,), generator=generator))


def dihedral(crop: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` (0..7) of the square: bit 2 = horizontal flip, bits 0-1 = quarter turns (official IPT's
    hflip, vflip and transpose generate the same group)."""
    if k & 4:
        crop = crop.flip(-1)
    return torch.rot90(crop, k & 3, dims=(-2, -1))


def random_crop(pixels: torch.Tensor, size: int, align: int, generator: torch.Generator, augment: bool) -> torch.Tensor:
    """A ``size x size`` float crop at a position on the ``align`` grid, randomly flipped/rotated if ``augment``.

    Aligning to the SR scale keeps the crop on the same pixel grid as a downscale of the whole image.
    """
    h, w = pixels.shape[-2:]
    y = align * randint((h - size) // align + 1, generator)
    x = align * randint((w - size) // align + 1, generator)
    crop = pixels[:, y : y + size, x : x + size]
    if augment:
        crop = dihedral(crop, randint(8, generator))
    return crop.float()


def paired_crop(
    degraded: torch.Tensor, clean: torch.Tensor, patch: int, scale: int, generator: torch.Generator, augment: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned crops of a stored pair: input ``(3, patch, patch)`` at ``(y, x)``, target ``(3, s*patch, s*patch)``
    at ``(s*y, s*x)``, the same flip/rotation applied to both. ``clean`` is at least ``s`` times ``degraded``."""
    h, w = degraded.shape[-2:]
    y, x = randint(h - patch + 1, generator), randint(w - patch + 1, generator)
    lr = degraded[:, y : y + patch, x : x + patch]
    hr = clean[:, scale * y : scale * (y + patch), scale * x : scale * (x + patch)]
    if augment:
        k = randint(8, generator)
        lr, hr = dihedral(lr, k), dihedral(hr, k)
    return lr.float(), hr.float()


def color_augment(
    patches: torch.Tensor, generator: torch.Generator, saturation: bool = True, others: list[torch.Tensor] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Colour augmentation of clean patches ``(B, 3, H, W)`` (0-255) before degradation (:data:`COLOR_AUGMENT`).

    Four numbers are drawn per patch whatever the outcome, so the rest of the step's stream does not depend on
    it. ``others`` (e.g. the stored inputs of real pairs) get the same channel permutation; ``saturation=False``
    leaves saturation alone (for stored pairs: scaling a real rainy or hazy input is not the same as degrading a
    rescaled clean image, but a channel permutation commutes with any degradation that treats channels alike).
    """
    n = patches.shape[0]
    u = torch.rand((n, 4), generator=generator, dtype=torch.float64)
    permute = u[:, 0] < COLOR_AUGMENT["permute_p"]
    order = _PERMUTATIONS[(u[:, 1] * len(_PERMUTATIONS)).long().clamp(max=len(_PERMUTATIONS) - 1)]
    out, rest = patches.clone(), [o.clone() for o in others]
    for i in torch.nonzero(permute).flatten().tolist():
        out[i] = out[i, order[i]]
        for o in rest:
            o[i] = o[i, order[i]]
    if saturation:
        lo, hi = COLOR_AUGMENT["saturation"]
        factor = torch.where(u[:, 2] < COLOR_AUGMENT["saturation_p"], lo + (hi - lo) * u[:, 3], 1.0)
        factor = factor.to(out.dtype).view(n, 1, 1, 1)
        grey = (out * _LUMA.to(out.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        out = (grey + factor * (out - grey)).clamp(0.0, 255.0)
    return out, rest

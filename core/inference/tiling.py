"""Whole-image inference for a network that only accepts fixed-size square tiles.

Two stitching schemes:

* :class:`TiledRestorer`: the paper's test protocol (48x48 tiles, 10 px overlap) with either a uniform mean of the
  overlapping outputs (``blend="average"``, as the paper) or a distance-weighted blend (``blend="smooth"``) that
  leaves no seams. Tiles go through the network ``tile_batch`` at a time and are accumulated straight into an
  output canvas, so memory is bounded by ``tile_batch`` plus the output image, whatever the image size.
  The image is first padded by reflection (``border``, 8 px by default) and the margin trimmed from the output:
  tiles at the image edge otherwise see the network's zero padding, and the outermost output pixels came back
  up to 87 levels off on flat images (sr4 of the bundled model; 0-4 levels with the 8 px margin).
* :func:`official_forward_chop`: the stitching of the official Pretrained-IPT test code (``forward_chop``:
  48x48 tiles at a stride of 12 px, centre crops averaged, border strips from extra tile passes). It is what the
  official numbers were computed with, and costs about nine times as many tiles as the paper's protocol.

``fn`` maps a batch of tiles ``(b, 3, T, T)`` to ``(b, 3, T*s, T*s)``; images are ``(3, H, W)`` or ``(B, 3, H, W)``
and come back as ``(..., 3, H*s, W*s)`` in the input's dtype and device.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TiledRestorer",
    "tile_positions",
    "count_tiles",
    "pad_border",
    "BORDER",
    "official_forward_chop",
    "official_tile_count",
    "dihedral",
    "dihedral_inverse",
]

K = TypeVar("K")
TileFn = Callable[[Tensor], Tensor]
ProgressFn = Callable[[int, int], None]


# --- geometry ---------------------------------------------------------------------------------------------------


def tile_positions(length: int, tile: int = 48, overlap: int = 10) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` pixels.

    Tiles start at 0 and advance by ``tile - overlap``; the last one is anchored at the far edge so that every
    pixel is covered (it may overlap its neighbour by more than ``overlap``). ``length <= tile`` gives ``[0]``
    (callers pad such images up to ``tile`` first).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if length <= tile:
        return [0]
    step = tile - overlap
    return [*range(0, length - tile, step), length - tile]


BORDER = 8  # reflection margin (input pixels) of TiledRestorer; see the module doc


def count_tiles(h: int, w: int, tile: int = 48, overlap: int = 10, border: int = BORDER) -> int:
    """Number of tiles :class:`TiledRestorer` runs for one ``h`` x ``w`` image (without self-ensemble), with the
    image padded by ``border`` pixels on every side."""
    h, w = h + 2 * border, w + 2 * border
    return len(tile_positions(max(h, tile), tile, overlap)) * len(tile_positions(max(w, tile), tile, overlap))


def official_tile_count(h: int, w: int, tile: int = 48, stride: int = 12) -> int:
    """Tiles the official ``forward_chop`` runs for one image: nH*nW + 2nH + 2nW + 1 (h, w >= tile).

    The grid costs nH*nW, the top/bottom strips nW each, the left/right strips nH each, the corner one.
    Smaller images are counted after padding to ``tile``, as :func:`official_forward_chop` does.
    """
    n_h = (max(h, tile) - tile) // stride + 1
    n_w = (max(w, tile) - tile) // stride + 1
    return n_h * n_w + 2 * n_h + 2 * n_w + 1


def _pad(x: Tensor, pad: tuple[int, int, int, int], mode: str) -> Tensor:
    if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
        # Some CPU builds lack half-precision padding kernels; padding is exact in float32 anyway.
        return F.pad(x.float(), pad, mode=mode).to(x.dtype)
    return F.pad(x, pad, mode=mode)


def pad_border(x: Tensor, border: int) -> Tensor:
    """Pad ``(B, C, H, W)`` by ``border`` pixels on every side by reflection (mirror without repeating the edge
    pixel); images with a side <= ``border`` are padded by replication (reflection needs a longer side)."""
    if border <= 0:
        return x
    h, w = x.shape[-2:]
    mode = "reflect" if border < h and border < w else "replicate"
    return _pad(x, (border, border, border, border), mode)


def _pad_to_min(x: Tensor, size: int) -> Tensor:
    """Pad (B, C, H, W) at the bottom/right to at least ``size`` on both sides.

    Reflection keeps image statistics natural for the network; it needs pad < side, so tiny images fall back to
    replicate padding.
    """
    h, w = x.shape[-2:]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return _pad(x, (0, pw, 0, ph), mode)


# --- dihedral transforms (self-ensemble) -------------------------------------------------------------------------


def dihedral(x: Tensor, k: int) -> Tensor:
    """The k-th (0..7) of the 8 flip/transpose transforms of the last two dims: bit0 flips W, bit1 flips H,
    bit2 transposes (applied last)."""
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if k & 4:
        x = x.transpose(-2, -1)
    return x


def dihedral_inverse(x: Tensor, k: int) -> Tensor:
    """Undo :func:`dihedral` ``k`` (the same operations in reverse order; each is its own inverse)."""
    if k & 4:
        x = x.transpose(-2, -1)
    if k & 2:
        x = x.flip(-2)
    if k & 1:
        x = x.flip(-1)
    return x


def _self_ensemble(restore: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Average of ``restore`` over the 8 dihedral transforms of ``x`` (each output mapped back)."""
    mean: Tensor | None = None
    for k in range(8):
        y = dihedral_inverse(restore(dihedral(x, k).contiguous()), k)
        # Running mean: leaves the value bit-exact when all eight agree (a plain sum/8 can round).
        mean = y.clone() if mean is None else mean.add_((y - mean) / (k + 1))
    assert mean is not None
    return mean


# --- accumulation -----------------------------------------------------------------------------------------------


class _Canvas:
    """A weighted running mean of tile outputs over a (B, C, H, W) canvas.

    Updating ``mean += w / (W + w) * (patch - mean)`` instead of summing and dividing at the end keeps the value
    bit-exact wherever all contributions agree (identity networks reproduce their input), for any weights.
    """

    def __init__(
        self, batch: int, channels: int, height: int, width: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.value = torch.zeros(batch, channels, height, width, dtype=dtype, device=device)
        self.weight = torch.zeros(batch, 1, height, width, dtype=dtype, device=device)
        self.remaining = 0  # tiles planned but not yet accumulated (TiledRestorer.stream)

    def add(self, b: int, top: int, left: int, patch: Tensor, weight: Tensor | None) -> None:
        h, w = patch.shape[-2:]
        value = self.value[b, :, top : top + h, left : left + w]
        total = self.weight[b, :, top : top + h, left : left + w]
        if weight is None:
            total.add_(1.0)
            value.add_((patch - value) / total)
        else:
            total.add_(weight)
            value.add_((patch - value) * (weight / total))


@dataclass(frozen=True)
class _Job:
    """One tile: where to read it from the input, and where its (windowed) output goes."""

    src: Tensor  # the (padded) input batch the tile is read from
    b: int
    y: int  # input top
    x: int  # input left
    canvas: _Canvas
    top: int  # canvas row of the tile output's first row
    left: int  # canvas column of the tile output's first column
    window: tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 of the tile output that are kept
    weight: Tensor | None  # full-tile output weights (None: uniform)


@dataclass
class _Plan:
    """One image's tiles and canvas, and the part of the canvas that is the output (the unpadded image)."""

    jobs: list[_Job]
    canvas: _Canvas
    crop: tuple[slice, slice]

    def __post_init__(self) -> None:
        self.canvas.remaining += len(self.jobs)

    def output(self) -> Tensor:
        return self.canvas.value[..., self.crop[0], self.crop[1]]


def _run_chunk(fn: TileFn, chunk: Sequence[_Job], tile: int, scale: int, accum_dtype: torch.dtype) -> None:
    """Run ``fn`` on one batch of tiles (from one image or several) and accumulate each output into its canvas."""
    out_size = tile * scale
    tiles = torch.stack([j.src[j.b, :, j.y : j.y + tile, j.x : j.x + tile] for j in chunk])
    out = fn(tiles)
    expected = (len(chunk), tiles.shape[1], out_size, out_size)
    if tuple(out.shape) != expected:
        raise ValueError(
            f"tile function returned shape {tuple(out.shape)} for input {tuple(tiles.shape)}; "
            f"expected {expected} (scale {scale})"
        )
    out = out.to(accum_dtype)
    for k, j in enumerate(chunk):
        r0, r1, c0, c1 = j.window
        w = None if j.weight is None else j.weight[r0:r1, c0:c1]
        j.canvas.add(j.b, j.top + r0, j.left + c0, out[k, :, r0:r1, c0:c1], w)


def _run_jobs(
    fn: TileFn,
    jobs: Sequence[_Job],
    tile: int,
    scale: int,
    tile_batch: int,
    accum_dtype: torch.dtype,
    progress: ProgressFn | None,
    done: int,
    total: int,
) -> int:
    """Run ``fn`` over ``jobs`` in chunks of ``tile_batch`` and accumulate each output; returns tiles done."""
    for start in range(0, len(jobs), tile_batch):
        chunk = jobs[start : start + tile_batch]
        _run_chunk(fn, chunk, tile, scale, accum_dtype)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return done


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _as_batch(image: Tensor) -> tuple[Tensor, bool]:
    if image.ndim == 3:
        return image.unsqueeze(0), True
    if image.ndim == 4:
        return image, False
    raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W), got shape {tuple(image.shape)}")


def _ramp(length: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """1-D blending weights: rise linearly over ``width`` pixels from each end, 1 in the middle, always > 0."""
    if width <= 0:
        return torch.ones(length, dtype=dtype, device=device)
    i = torch.arange(length, dtype=torch.float64, device=device)
    # Pixel centres (i + 0.5) keep the weight at the very edge positive and the ramps of two tiles that overlap
    # by exactly ``width`` summing to one (a pure cross-fade).
    edge = torch.minimum(i + 0.5, length - i - 0.5)
    return (edge / width).clamp(max=1.0).to(dtype)


# --- the paper's protocol ---------------------------------------------------------------------------------------


class TiledRestorer:
    """Restore images of any size with a fixed-tile network (the paper's protocol: 48x48 tiles, 10 px overlap).

    Args:
        fn: maps tiles ``(b, 3, tile, tile)`` to ``(b, 3, tile*scale, tile*scale)``; called in the input's
            dtype and device, under ``torch.no_grad()``.
        scale: output size / input size.
        tile: tile side in input pixels.
        overlap: minimum overlap of neighbouring tiles in input pixels (the last tile on each axis is anchored at
            the edge and may overlap more).
        blend: ``"average"`` is the uniform mean of overlapping outputs (the paper); ``"smooth"`` weights every
            output by a separable linear ramp over the overlap width, a cross-fade that leaves no seams.
        tile_batch: tiles per ``fn`` call; bounds the network's memory independently of the image size.
        border: reflection margin in input pixels added on every side before tiling and trimmed from the output
            (0: none, the image edge then meets the network's zero padding).
        self_ensemble: average over the 8 flips/transposes of the whole input (x8 the cost).
        progress: called as ``progress(done, total)`` after every ``fn`` call (tiles over the whole call).
    """

    def __init__(
        self,
        fn: TileFn,
        scale: int,
        tile: int = 48,
        overlap: int = 10,
        blend: Literal["average", "smooth"] = "smooth",
        tile_batch: int = 16,
        self_ensemble: bool = False,
        progress: ProgressFn | None = None,
        border: int = BORDER,
    ) -> None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if blend not in ("average", "smooth"):
            raise ValueError(f"blend must be 'average' or 'smooth', got {blend!r}")
        if tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        if border < 0:
            raise ValueError(f"border must be >= 0, got {border}")
        tile_positions(tile, tile, overlap)  # validates tile/overlap
        self.fn = fn
        self.scale = scale
        self.tile = tile
        self.overlap = overlap
        self.blend = blend
        self.tile_batch = tile_batch
        self.self_ensemble = self_ensemble
        self.progress = progress
        self.border = border

    def count_tiles(self, h: int, w: int) -> int:
        """Tiles (``fn`` inputs) needed for one ``h`` x ``w`` image, self-ensemble included."""
        n = count_tiles(h, w, self.tile, self.overlap, self.border)
        if self.self_ensemble:
            n = 4 * n + 4 * count_tiles(w, h, self.tile, self.overlap, self.border)
        return n

    @torch.no_grad()
    def __call__(self, image: Tensor) -> Tensor:
        x, single = _as_batch(image)
        b, _, h, w = x.shape
        total = b * self.count_tiles(h, w)
        state = {"done": 0}

        def restore(xi: Tensor) -> Tensor:
            out, state["done"] = self._restore(xi, state["done"], total)
            return out

        y = _self_ensemble(restore, x) if self.self_ensemble else restore(x)
        y = y.to(image.dtype).contiguous()  # no view into a larger (padded) canvas
        return y[0] if single else y

    def _plan(self, x: Tensor) -> "_Plan":
        """The tiles of ``x`` (B, C, H, W) and the canvas their outputs are blended into."""
        b, c, h, w = x.shape
        t, s, m = self.tile, self.scale, self.border
        xp = _pad_to_min(pad_border(x, m), t)
        hp, wp = xp.shape[-2:]
        accum = _accum_dtype(x.dtype)
        canvas = _Canvas(b, c, hp * s, wp * s, accum, x.device)
        weight = None
        if self.blend == "smooth":
            ramp = _ramp(t * s, self.overlap * s, accum, x.device)
            weight = ramp[:, None] * ramp[None, :]
        full = (0, t * s, 0, t * s)
        jobs = [
            _Job(xp, bi, yi, xi, canvas, yi * s, xi * s, full, weight)
            for bi in range(b)
            for yi in tile_positions(hp, t, self.overlap)
            for xi in tile_positions(wp, t, self.overlap)
        ]
        return _Plan(jobs, canvas, (slice(m * s, (m + h) * s), slice(m * s, (m + w) * s)))

    def _restore(self, x: Tensor, done: int, total: int) -> tuple[Tensor, int]:
        plan = self._plan(x)
        accum = _accum_dtype(x.dtype)
        done = _run_jobs(self.fn, plan.jobs, self.tile, self.scale, self.tile_batch, accum, self.progress, done, total)
        return plan.output(), done

    @torch.no_grad()
    def stream(self, images: Iterable[tuple[K, Tensor]]) -> Iterator[tuple[K, Tensor]]:
        """Restore many images, filling every ``fn`` call with up to ``tile_batch`` tiles of consecutive images.

        ``images`` yields ``(key, image (C, H, W))`` and is read lazily: an image is taken only when the tiles
        already planned no longer fill a batch, so at most ``tile_batch`` tiles' worth of images (plus one) are
        held. Yields ``(key, restored (C, H*s, W*s))`` in input order as soon as an image's last tile is done;
        each output equals ``self(image)`` (tiles are independent; the network sees the same tiles, in batches
        made across images). With ``self_ensemble`` images go one at a time. ``progress`` is not called.
        """
        if self.self_ensemble:
            for key, image in images:
                yield key, self(image)
            return
        source = iter(images)
        pending: deque[_Job] = deque()
        open_images: deque[tuple[K, _Plan, Tensor]] = deque()
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.tile_batch:
                item = next(source, None)
                if item is None:
                    exhausted = True
                else:
                    key, image = item
                    plan = self._plan(_as_batch(image)[0])
                    pending.extend(plan.jobs)
                    open_images.append((key, plan, image))
            if not pending:
                return
            chunk = [pending.popleft() for _ in range(min(self.tile_batch, len(pending)))]
            _run_chunk(self.fn, chunk, self.tile, self.scale, chunk[0].canvas.value.dtype)
            for job in chunk:
                job.canvas.remaining -= 1
            while open_images and open_images[0][1].canvas.remaining == 0:
                key, plan, image = open_images.popleft()
                yield key, plan.output()[0].to(image.dtype).contiguous()


# --- the official protocol --------------------------------------------------------------------------------------


def _strip_window(index: int, count: int, margin: int, size: int) -> tuple[int, int]:
    """Kept span of tile ``index`` of ``count`` along a strip: the centre, extended to the tile edge for the first
    and last tile (where no neighbour covers the margin)."""
    return (0 if index == 0 else margin, size if index == count - 1 else size - margin)


@torch.no_grad()
def official_forward_chop(
    fn: TileFn,
    image: Tensor,
    scale: int,
    tile: int = 48,
    stride: int = 12,
    tile_batch: int = 64,
    self_ensemble: bool = False,
    progress: ProgressFn | None = None,
) -> Tensor:
    """Whole-image inference with the stitching of the official Pretrained-IPT ``forward_chop``.

    Geometry (T = tile, st = stride, s = scale, h' = h - (h - T) % st, likewise w'):

    * a grid of nH x nW tiles at stride st over the top-left h' x w'; each output keeps its centre
      (a margin of st*s removed on every side) and overlapping centres are averaged;
    * four strips of tiles along the top (rows 0:T), bottom (rows h-T:h), left and right edges, each a row or
      column of tiles at stride st whose outputs keep their full extent across the strip and their centre along
      it (the first and last tile keep their outer margin too), averaged;
    * one tile anchored at the bottom-right corner.

    The output is assembled as the official code does: the grid inside, the left strip along the left margin
    band (and in the top band up to column T*s), the top strip in the rest of the top band; the bottom strip,
    right strip and corner below/right of the midpoints of their overlap with the grid's extent.
    Images smaller than ``tile`` are padded (the official code requires h, w >= tile). ``self_ensemble``
    averages over the 8 flips/transposes like the official ``forward_x8``. ``tile_batch`` is the official
    ``crop_batch_size`` (it does not change the result).
    """
    if stride <= 0 or 3 * stride >= tile:
        # The official crop margin equals the stride; the assembly only reads averaged regions if st < T/3.
        raise ValueError(f"stride must be in (0, tile/3), got {stride} for tile {tile}")
    if scale < 1 or tile_batch < 1:
        raise ValueError(f"scale and tile_batch must be >= 1, got {scale}, {tile_batch}")
    x, single = _as_batch(image)
    b, _, h, w = x.shape
    total = b * official_tile_count(h, w, tile, stride)
    if self_ensemble:
        total = 4 * total + 4 * b * official_tile_count(w, h, tile, stride)
    state = {"done": 0}

    def restore(xi: Tensor) -> Tensor:
        out, state["done"] = _official_restore(fn, xi, scale, tile, stride, tile_batch, progress, state["done"], total)
        return out

    y = _self_ensemble(restore, x) if self_ensemble else restore(x)
    y = y.to(image.dtype).contiguous()
    return y[0] if single else y


def _assemble_official(canvases: dict[str, _Canvas], h: int, w: int, hh: int, ww: int, t: int, s: int, st: int
                       ) -> Tensor:
    """The official ``forward_chop`` output from its six averaged canvases (see :func:`official_forward_chop`)."""
    grid, top, bottom, left, right, corner = (canvases[k] for k in ("grid", "top", "bottom", "left", "right", "corner"))
    b, c = grid.value.shape[:2]
    T, m = t * s, st * s
    # Seams between the grid's extent and the bottom strip / right strip lie at the middle of their overlap
    # (rounded towards the strip when the overlap is odd), which also drops the grid's uncropped far margins.
    rows_split = (h - t) * s + math.ceil((t - (h - hh)) * s / 2)
    cols_split = (w - t) * s + math.ceil((t - (w - ww)) * s / 2)
    by, bx = (h - t) * s, (w - t) * s  # output offsets of the bottom strip / right strip
    out = torch.empty(b, c, h * s, w * s, dtype=grid.value.dtype, device=grid.value.device)
    R, C = rows_split, cols_split
    out[..., :R, :C] = grid.value[..., :R, :C]
    # Margin bands where the grid has no centre crops: the left strip's band, then the top band (the official
    # code writes the top strip and then the left strip over columns < T*s, so the left strip wins there).
    out[..., :R, :m] = left.value[..., :R, :m]
    out[..., :m, : min(T, C)] = left.value[..., :m, : min(T, C)]
    if C > T:
        out[..., :m, T:C] = top.value[..., :m, T:C]
    out[..., R:, :C] = bottom.value[..., R - by :, :C]
    out[..., :R, C:] = right.value[..., :R, C - bx :]
    out[..., R:, C:] = corner.value[..., R - by :, C - bx :]
    return out


def _official_restore(
    fn: TileFn,
    x: Tensor,
    s: int,
    t: int,
    st: int,
    tile_batch: int,
    progress: ProgressFn | None,
    done: int,
    total: int,
) -> tuple[Tensor, int]:
    b, c, h0, w0 = x.shape
    x = _pad_to_min(x, t)
    h, w = x.shape[-2:]
    accum = _accum_dtype(x.dtype)
    dev = x.device
    n_h, n_w = (h - t) // st + 1, (w - t) // st + 1
    hh, ww = (n_h - 1) * st + t, (n_w - 1) * st + t  # extent of the stride grid (h', w')
    T, m = t * s, st * s  # tile output side, crop margin (output pixels)

    grid = _Canvas(b, c, hh * s, ww * s, accum, dev)
    top = _Canvas(b, c, T, ww * s, accum, dev)
    bottom = _Canvas(b, c, T, ww * s, accum, dev)
    left = _Canvas(b, c, hh * s, T, accum, dev)
    right = _Canvas(b, c, hh * s, T, accum, dev)
    corner = _Canvas(b, c, T, T, accum, dev)

    def jobs() -> Iterator[_Job]:
        for bi in range(b):
            for i in range(n_h):
                for j in range(n_w):
                    yield _Job(x, bi, i * st, j * st, grid, i * st * s, j * st * s, (m, T - m, m, T - m), None)
            for j in range(n_w):
                c0, c1 = _strip_window(j, n_w, m, T)
                yield _Job(x, bi, 0, j * st, top, 0, j * st * s, (0, T, c0, c1), None)
                yield _Job(x, bi, h - t, j * st, bottom, 0, j * st * s, (0, T, c0, c1), None)
            for i in range(n_h):
                r0, r1 = _strip_window(i, n_h, m, T)
                yield _Job(x, bi, i * st, 0, left, i * st * s, 0, (r0, r1, 0, T), None)
                yield _Job(x, bi, i * st, w - t, right, i * st * s, 0, (r0, r1, 0, T), None)
            yield _Job(x, bi, h - t, w - t, corner, 0, 0, (0, T, 0, T), None)

    done = _run_jobs(fn, list(jobs()), t, s, tile_batch, accum, progress, done, total)

    canvases = {"grid": grid, "top": top, "bottom": bottom, "left": left, "right": right, "corner": corner}
    out = _assemble_official(canvases, h, w, hh, ww, t, s, st)
    return out[..., : h0 * s, : w0 * s], done

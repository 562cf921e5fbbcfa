"""Tiled inference: exact reconstruction, bounded batches, seamless blending, self-ensemble, official stitching."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from ipt.core.inference.tiling import (
    BORDER,
    TiledRestorer,
    count_tiles,
    dihedral,
    dihedral_inverse,
    official_forward_chop,
    official_tile_count,
    pad_border,
    tile_positions,
)

SIZES = [(17, 30), (40, 45), (48, 48), (49, 49), (97, 131), (5, 3)]  # < tile: replicate, reflect pad


def _img(h: int, w: int, seed: int = 0, batch: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (3, h, w) if batch is None else (batch, 3, h, w)
    # Non-integer values: exactness must not rely on 8-bit inputs.
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 255).to(dtype)


def _up(x: Tensor, s: int) -> Tensor:
    return x.repeat_interleave(s, -1).repeat_interleave(s, -2)


class _Counter:
    """Wraps a tile function; records how many tiles and calls it saw, and the largest batch."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn, self.tiles, self.calls, self.max_batch = fn, 0, 0, 0

    def __call__(self, t: Tensor) -> Tensor:
        assert t.ndim == 4 and t.shape[-2:] == (48, 48)
        self.tiles += t.shape[0]
        self.calls += 1
        self.max_batch = max(self.max_batch, t.shape[0])
        return self.fn(t)


# --- geometry ---------------------------------------------------------------------------------------------------


def test_tile_positions_cover_and_anchor() -> None:
    assert tile_positions(48, 48, 10) == [0]
    assert tile_positions(30, 48, 10) == [0]
    assert tile_positions(49, 48, 10) == [0, 1]
    assert tile_positions(86, 48, 10) == [0, 38]
    assert tile_positions(100, 48, 10) == [0, 38, 52]
    for length in range(48, 300, 7):
        for overlap in (0, 10, 24, 47):
            pos = tile_positions(length, 48, overlap)
            assert pos[0] == 0 and pos[-1] == length - 48
            assert all(b - a <= 48 - overlap and b > a for a, b in zip(pos, pos[1:]))
    with pytest.raises(ValueError):
        tile_positions(100, 48, 48)


def test_count_tiles() -> None:
    assert count_tiles(48, 48, border=0) == 1
    assert count_tiles(48, 48) == 4  # 64x64 after the 8 px reflection margin
    assert count_tiles(32, 32) == count_tiles(17, 30) == 1
    assert count_tiles(481, 321) == count_tiles(481, 321, border=0) == 13 * 9
    assert official_tile_count(481, 321) == 972
    assert official_tile_count(48, 48) == 1 + 2 + 2 + 1


# --- paper protocol: exact reconstruction -----------------------------------------------------------------------


@pytest.mark.parametrize("blend", ["average", "smooth"])
@pytest.mark.parametrize("overlap", [0, 10, 24])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_identity_and_nearest_reproduce_input(blend: str, overlap: int, scale: int) -> None:
    fn = (lambda t: t.clone()) if scale == 1 else (lambda t: _up(t, scale))
    restorer = TiledRestorer(fn, scale=scale, overlap=overlap, blend=blend, tile_batch=5)  # type: ignore[arg-type]
    for i, (h, w) in enumerate(SIZES):
        x = _img(h, w, seed=i)
        y = restorer(x)
        assert y.shape == (3, h * scale, w * scale) and y.dtype == x.dtype
        assert torch.equal(y, _up(x, scale)), (h, w)


def test_batched_input_and_tile_count() -> None:
    x = _img(97, 131, batch=2)
    counter = _Counter(lambda t: _up(t, 2))
    y = TiledRestorer(counter, scale=2, tile_batch=7)(x)
    assert torch.equal(y, _up(x, 2))
    assert counter.tiles == 2 * count_tiles(97, 131) and counter.max_batch <= 7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    x = _img(50, 61, dtype=dtype)
    seen: list[torch.dtype] = []

    def fn(t: Tensor) -> Tensor:
        seen.append(t.dtype)
        return _up(t, 2)

    y = TiledRestorer(fn, scale=2)(x)
    assert y.dtype == dtype and set(seen) == {dtype}
    assert torch.equal(y, _up(x, 2))


def _content_fn(t: Tensor) -> Tensor:
    """A non-trivial, per-tile deterministic network stand-in (depends on the whole tile, not pointwise)."""
    return _up(torch.tanh(t / 100) * 80 + t.mean(dim=(1, 2, 3), keepdim=True) * 0.5, 2)


@pytest.mark.parametrize("blend", ["average", "smooth"])
def test_tile_batch_does_not_change_result(blend: str) -> None:
    x = _img(90, 77, batch=2, seed=3)
    ref = TiledRestorer(_content_fn, scale=2, blend=blend, tile_batch=1)(x)  # type: ignore[arg-type]
    for tb in (3, 16, 1000):
        restorer = TiledRestorer(_content_fn, scale=2, blend=blend, tile_batch=tb)  # type: ignore[arg-type]
        assert torch.equal(restorer(x), ref)


def test_progress_reports_every_call() -> None:
    calls: list[tuple[int, int]] = []
    x = _img(97, 131, batch=2)
    TiledRestorer(lambda t: t, scale=1, tile_batch=4, progress=lambda d, n: calls.append((d, n)))(x)
    total = 2 * count_tiles(97, 131)
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and all(n == total for _, n in calls)


def test_wrong_fn_output_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="expected"):
        TiledRestorer(lambda t: t, scale=2)(_img(48, 48))


# --- blending ---------------------------------------------------------------------------------------------------


def _offset_fn(amplitude: float, seed: int = 0) -> Callable[[Tensor], Tensor]:
    """Adds an independent random constant in [0, amplitude) to every tile it is given: a worst case for seams."""
    g = torch.Generator().manual_seed(seed)

    def fn(t: Tensor) -> Tensor:
        return t + torch.rand(t.shape[0], 1, 1, 1, generator=g, dtype=t.dtype) * amplitude

    return fn


def _max_jump(y: Tensor) -> float:
    return max(y.diff(dim=-1).abs().max().item(), y.diff(dim=-2).abs().max().item())


def test_smooth_blend_has_no_seams() -> None:
    amplitude, overlap = 50.0, 10
    x = torch.zeros(3, 150, 170)
    smooth = TiledRestorer(_offset_fn(amplitude), scale=1, overlap=overlap, blend="smooth")(x)
    average = TiledRestorer(_offset_fn(amplitude), scale=1, overlap=overlap, blend="average")(x)
    # A linear cross-fade over the overlap changes by at most ~amplitude/overlap per pixel (x2 for the corners
    # where four tiles meet, and the extra overlap of edge-anchored tiles only makes ramps flatter).
    assert _max_jump(smooth) <= 2 * amplitude / overlap
    # The uniform mean jumps where a tile starts or ends (~22 here): the bound above does catch seams.
    assert _max_jump(average) > 3 * amplitude / overlap


def test_smooth_blend_is_convex() -> None:
    # Outputs are convex combinations of the tile outputs: a constant offset stays exact, ranges are respected.
    x = _img(100, 90)
    y = TiledRestorer(lambda t: t + 7.0, scale=1, blend="smooth")(x)
    torch.testing.assert_close(y, x + 7.0)
    y = TiledRestorer(_offset_fn(10.0, seed=1), scale=1, blend="smooth")(torch.zeros(3, 100, 90))
    assert y.min() >= 0 and y.max() < 10.0


# --- self-ensemble ----------------------------------------------------------------------------------------------


def test_dihedral_inverse() -> None:
    x = _img(7, 11)
    transforms = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(transforms) == 8
    for k in range(8):
        assert torch.equal(dihedral_inverse(dihedral(x, k), k), x)


@pytest.mark.parametrize("scale", [1, 3])
def test_self_ensemble_of_equivariant_fn_is_the_fn(scale: int) -> None:
    pointwise = lambda t: _up(t * 0.5 + 3.0, scale)  # noqa: E731
    x = _img(61, 50, batch=2)
    counter = _Counter(pointwise)
    restorer = TiledRestorer(counter, scale=scale, self_ensemble=True)
    y = restorer(x)
    torch.testing.assert_close(y, _up(x * 0.5 + 3.0, scale), rtol=0, atol=1e-4)
    assert counter.tiles == 2 * restorer.count_tiles(61, 50) == 2 * 4 * (count_tiles(61, 50) + count_tiles(50, 61))
    assert torch.equal(TiledRestorer(lambda t: t, scale=1, self_ensemble=True)(x), x)


def test_self_ensemble_averages_the_eight_transforms() -> None:
    def skewed(t: Tensor) -> Tensor:  # not flip-equivariant: a horizontal gradient inside every tile
        return t + torch.linspace(0, 30, t.shape[-1])

    x = _img(70, 55, seed=5)
    plain = TiledRestorer(skewed, scale=1)
    expected = torch.stack([dihedral_inverse(plain(dihedral(x, k)), k) for k in range(8)]).mean(0)
    y = TiledRestorer(skewed, scale=1, self_ensemble=True)(x)
    torch.testing.assert_close(y, expected)
    assert not torch.allclose(y, plain(x))


# --- official forward_chop --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_official_chop_reproduces_input(scale: int) -> None:
    counter = _Counter((lambda t: t.clone()) if scale == 1 else (lambda t: _up(t, scale)))
    sizes = [(48, 48), (49, 59), (60, 61), (97, 131), (17, 30)]
    for i, (h, w) in enumerate(sizes):
        x = _img(h, w, seed=i)
        counter.tiles = 0
        y = official_forward_chop(counter, x, scale, tile_batch=10)
        assert y.shape == (3, h * scale, w * scale)
        assert torch.equal(y, _up(x, scale)), (h, w)
        assert counter.tiles == official_tile_count(h, w), (h, w)
        assert counter.max_batch <= 10


def test_official_chop_tile_count_481x321() -> None:
    counter = _Counter(lambda t: t)
    x = _img(481, 321)
    y = official_forward_chop(counter, x, 1)
    assert torch.equal(y, x)
    assert counter.tiles == 972 == official_tile_count(481, 321)
    n_h, n_w = (481 - 48) // 12 + 1, (321 - 48) // 12 + 1
    assert counter.tiles == n_h * n_w + 2 * n_h + 2 * n_w + 1
    # The paper's protocol is about nine times cheaper.
    assert 8 < counter.tiles / count_tiles(481, 321) < 9


def _axis_sets(length: int, t: int = 48, st: int = 12) -> tuple[list[int], int]:
    n = (length - t) // st + 1
    return [i * st for i in range(n)], (n - 1) * st + t


def _official_expected(h: int, w: int, t: int = 48, st: int = 12) -> Tensor:
    """Per-pixel rules of the official stitching (scale 1) for a tile function that outputs the constant
    1000*y0 + x0 (y0, x0: the tile's top-left input position): each pixel is the mean of its sources' ids."""
    rows, hh = _axis_sets(h, t, st)
    cols, ww = _axis_sets(w, t, st)
    split_r = (h - t) + math.ceil((t - (h - hh)) / 2)
    split_c = (w - t) + math.ceil((t - (w - ww)) / 2)

    def mean(v: list[int]) -> float:
        assert v, "pixel without a source"
        return sum(v) / len(v)

    def centre(pos: list[int], p: int) -> list[int]:  # grid tiles whose centre crop covers p
        return [q for q in pos if q + st <= p < q + t - st]

    def strip(pos: list[int], p: int) -> list[int]:  # strip tiles covering p (ends keep their outer margin)
        lo = lambda i: 0 if i == 0 else st  # noqa: E731
        hi = lambda i: t if i == len(pos) - 1 else t - st  # noqa: E731
        return [q for i, q in enumerate(pos) if lo(i) <= p - q < hi(i)]

    out = torch.empty(h, w, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            if r >= split_r and c >= split_c:
                v = 1000.0 * (h - t) + (w - t)  # corner tile
            elif r >= split_r:
                v = 1000.0 * (h - t) + mean(strip(cols, c))  # bottom strip
            elif c >= split_c:
                v = 1000.0 * mean(strip(rows, r)) + (w - t)  # right strip
            elif c < st or (r < st and c < t):
                v = 1000.0 * mean(strip(rows, r))  # left strip (written after the top strip)
            elif r < st:
                v = mean(strip(cols, c))  # top strip
            else:
                v = 1000.0 * mean(centre(rows, r)) + mean(centre(cols, c))  # averaged grid centres
            out[r, c] = v
    return out


@pytest.mark.parametrize(("h", "w"), [(48, 48), (53, 70), (96, 61), (110, 123)])
def test_official_chop_stitching_rules(h: int, w: int) -> None:
    # The input carries each pixel's coordinates, so the tile function can tell where a tile came from.
    rr, cc = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    x = torch.stack([rr, cc, torch.zeros_like(rr)])

    def tile_id(t: Tensor) -> Tensor:
        ids = 1000.0 * t[:, 0, 0, 0] + t[:, 1, 0, 0]
        return ids.view(-1, 1, 1, 1).expand(-1, 3, t.shape[-2], t.shape[-1]).clone()

    y = official_forward_chop(tile_id, x, 1, tile_batch=9)
    torch.testing.assert_close(y[0], _official_expected(h, w), rtol=0, atol=1e-9)
    assert torch.equal(y[0], y[2])


def test_official_chop_batch_and_self_ensemble() -> None:
    x = _img(60, 75, batch=2, seed=7)
    single = torch.stack([official_forward_chop(_content_fn, xi, 2) for xi in x])
    torch.testing.assert_close(official_forward_chop(_content_fn, x, 2, tile_batch=13), single)
    counter = _Counter(lambda t: _up(t, 2))
    assert torch.equal(official_forward_chop(counter, x, 2, self_ensemble=True), _up(x, 2))
    assert counter.tiles == 2 * 4 * (official_tile_count(60, 75) + official_tile_count(75, 60))
    with pytest.raises(ValueError):
        official_forward_chop(counter, x, 2, stride=16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_device(dtype: torch.dtype) -> None:
    x = _img(97, 61, batch=2, dtype=dtype).cuda()
    devices: set[str] = set()

    def fn(t: Tensor) -> Tensor:
        devices.add(t.device.type)
        return _up(t, 2)

    for blend in ("average", "smooth"):
        y = TiledRestorer(fn, scale=2, blend=blend, self_ensemble=True)(x)  # type: ignore[arg-type]
        assert y.device == x.device and y.dtype == dtype and torch.equal(y, _up(x, 2))
    y = official_forward_chop(fn, x, 2)
    assert y.device == x.device and torch.equal(y, _up(x, 2))
    assert devices == {"cuda"}


# --- image borders: reflection margin ---------------------------------------------------------------------------


def _zero_padded_blur(scale: int) -> Callable[[Tensor], Tensor]:
    """A tile network with the fault of real ones: a 5x5 box blur with zero padding (dark tile edges), then a
    nearest upscale by ``scale``."""
    kernel = torch.full((3, 1, 5, 5), 1 / 25)

    def fn(t: Tensor) -> Tensor:
        return _up(torch.nn.functional.conv2d(t, kernel.to(t.dtype), padding=2, groups=3), scale)

    return fn


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(64, 64), (37, 101), (5, 7), (48, 48)])
def test_flat_image_stays_flat_at_the_border(scale: int, size: tuple[int, int]) -> None:
    """Border pixels as good as interior ones: the image is reflect-padded before tiling. Without the margin the
    zero padding of the tile function darkens the outermost two pixels (the fault users saw as dark corners);
    inside, only the blended seams between tiles remain (the same with or without the margin)."""
    fn = _zero_padded_blur(scale)
    flat = torch.full((3, *size), 200.0)

    def band_and_inside(y: Tensor) -> tuple[float, float]:
        err = (y - 200.0).abs().amax(0)
        band = torch.ones_like(err, dtype=torch.bool)
        band[2 * scale : -2 * scale, 2 * scale : -2 * scale] = False
        return float(err[band].max()), float(err[~band].max()) if (~band).any() else 0.0

    y = TiledRestorer(fn, scale=scale)(flat)
    assert y.shape == (3, size[0] * scale, size[1] * scale)
    band, inside = band_and_inside(y)
    assert band <= max(inside, 1e-3), (band, inside)
    band0, _ = band_and_inside(TiledRestorer(fn, scale=scale, border=0)(flat))
    assert band0 >= 200 * 16 / 25 - 1e-3  # the corner pixel sees 3x3 of its 5x5 window


def test_pad_border_reflects_and_falls_back_to_replicate() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    y = pad_border(x, 2)
    assert y.shape == (1, 1, 7, 8)
    assert y[0, 0, 2, :4].tolist() == [2.0, 1.0, 0.0, 1.0]  # mirror without repeating the edge pixel
    z = pad_border(x, 3)  # side 3 <= margin 3: replicate
    assert z[0, 0, 0, :4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert pad_border(x, 0) is x and BORDER == 8


def test_bundled_model_flat_images_every_task() -> None:
    """Every task of the registry, with the bundled model (which holds them all): flat grey and white pages come
    back flat to within 4 levels at the border as inside (was up to 87 levels off for sr4 without the margin).

    A noise-free page is out of distribution for the denoisers, which draw a faint texture on it everywhere (v2:
    up to 7 levels, MODEL_CARD "Limits"); for them the border may be no worse than the interior (+1 level)."""
    from ipt.core.checkpoints.bundled import bundled_model_dir
    from ipt.core.checkpoints.pretrained import read_config
    from ipt.core.evaluation.metrics import quantize
    from ipt.core.inference.restorer import TaskRestorer, load_task_model
    from ipt.registry import get_registry

    bundled = [t.name for t in read_config(bundled_model_dir()).tasks]
    assert set(get_registry().names()) <= set(bundled)
    for task in bundled:
        restorer = TaskRestorer(load_task_model(None, task), task)
        for value, size in ((255.0, (40, 40)), (128.0, (23, 50))):
            y = quantize(restorer(torch.full((3, *size), value)))
            assert y.shape[-2:] == (size[0] * restorer.scale, size[1] * restorer.scale)
            err = (y - value).abs()
            if not task.startswith("denoise"):
                assert float(err.max()) <= 4, (task, value)
                continue
            band = 4 * restorer.scale
            inner = err[..., band:-band, band:-band]
            assert float(err.max()) <= float(inner.max()) + 1, (task, value, float(err.max()), float(inner.max()))
            assert float(err.max()) <= 8, (task, value)

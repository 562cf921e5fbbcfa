"""Benchmark folder layouts for ``ipt eval``: find (degraded, clean) image pairs, or clean images to degrade.

Layouts, tried in this order on ``--data DIR``:

1. **EDSR / Set5 style**: ``DIR/HR/`` + ``DIR/LR_bicubic/X{s}/`` for an SR task of scale ``s``; LR files are named
   like their HR file with an ``x{s}`` suffix (``babyx2.png`` for ``baby.png``) or identically. Without
   ``LR_bicubic/X{s}/``, ``HR/`` is used as a clean folder (the LR images are made with the same MATLAB bicubic).
2. **Paired subfolders**: one clean folder (``norain``, ``target``, ``gt``, ``clean``, ``original``,
   ``original_png``, ``sharp``, ``label``, case-insensitive) and one degraded folder (``rainy``, ``rain``,
   ``input``, ``lq``, ``degraded``, ``blur``; for ``denoise<sigma>`` also ``noisy<sigma>``, ``noisy_<sigma>``,
   ``sigma<sigma>``, as the CBSD68 packages ship them). A clean folder without a degraded one for the task is a
   clean folder (layout 4).
3. **Rain100L flat**: ``rain-XXX.png`` next to ``norain-XXX.png`` in ``DIR`` (also ``rainy-``; clean ``clean-``/``gt-``).
4. **Clean folder**: the images in ``DIR`` (or ``DIR`` itself if it is one image) are degraded on the fly by the
   task's plugin with a fixed seed per image (CBSD68 clean + Gaussian noise, Set5 HR + bicubic, ...).

Pairing is by name after stripping the ``rain-``/``norain-`` style prefixes and an ``x{s}`` suffix. It fails loudly
(:class:`PairingError`, with the list of files) on unmatched or ambiguous files and when an input would be scored
against itself (the same file, or a byte-identical copy), the trap of the official Rain100L reader on a flat folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ipt.core.images.io import ImageReadError, image_size, is_image_file, list_images

__all__ = ["ImagePair", "Layout", "PairingError", "detect_layout", "pair_by_name", "check_sizes", "modcrop_size"]

CLEAN_DIRS = ("norain", "target", "targets", "gt", "groundtruth", "clean", "original", "original_png", "sharp", "label")
DEGRADED_DIRS = ("rainy", "rain", "input", "inputs", "lq", "degraded", "blur", "blurry")
DEGRADED_PREFIXES = ("rain", "rainy")
CLEAN_PREFIXES = ("norain", "clean", "gt")
_SHOWN = 20


class PairingError(ValueError):
    """A benchmark folder whose files cannot be paired; ``str()`` lists the offending files."""


@dataclass(frozen=True)
class ImagePair:
    """One evaluation sample: ``degraded`` is ``None`` when the input is made from ``clean`` on the fly."""

    name: str
    clean: Path
    degraded: Path | None = None


@dataclass
class Layout:
    """What :func:`detect_layout` found: the layout kind, a one-line description and the pairs (sorted by name)."""

    kind: str  # "sr_benchmark" | "paired_folders" | "flat_prefix" | "clean_folder"
    description: str
    pairs: list[ImagePair] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return self.kind == "clean_folder"


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOWN else "")


def _subdir(parent: Path, names: tuple[str, ...]) -> list[Path]:
    """Subfolders of ``parent`` whose lower-cased name is in ``names`` (in the order of ``names``)."""
    found = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else {}
    return [found[n] for n in names if n in found]


_PREFIX_RE = re.compile(r"^(?:no)?rain(?:y)?[-_]|^(?:clean|gt)[-_]", re.IGNORECASE)
_SUFFIX_RE = re.compile(r"[-_]?x\d+$", re.IGNORECASE)


def _keys(stem: str, scale: int) -> list[str]:
    """Name keys of a file, most specific first: the stem, then without prefix / ``x{s}`` suffix / both."""
    suffix_re = re.compile(rf"[-_]?x{scale}$", re.IGNORECASE) if scale > 1 else _SUFFIX_RE
    no_prefix = _PREFIX_RE.sub("", stem)
    keys = [stem, no_prefix, suffix_re.sub("", stem), suffix_re.sub("", no_prefix)]
    out: list[str] = []
    for k in keys:
        if k and k not in out:
            out.append(k)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve() or a.samefile(b):
            return True
        if a.stat().st_size != b.stat().st_size:
            return False
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def pair_by_name(degraded: list[Path], clean: list[Path], scale: int = 1, where: str = "") -> list[ImagePair]:
    """Pair degraded and clean files by name (see the module doc); raises :class:`PairingError` with the lists of
    unmatched, ambiguous and self-paired files."""
    index: dict[str, Path | None] = {}  # key -> clean file, None if the key is ambiguous
    exact = {c.stem: c for c in clean}
    for c in clean:
        for k in _keys(c.stem, scale):
            index[k] = c if index.get(k, c) == c else None
    used: dict[Path, list[Path]] = {}
    pairs: list[ImagePair] = []
    unmatched: list[str] = []
    for d in degraded:
        match = exact.get(d.stem)
        if match is None:
            for k in _keys(d.stem, scale):
                if index.get(k) is not None:
                    match = index[k]
                    break
        if match is None:
            unmatched.append(d.name)
            continue
        used.setdefault(match, []).append(d)
        pairs.append(ImagePair(name=_PREFIX_RE.sub("", match.stem) or match.stem, clean=match, degraded=d))
    problems: list[str] = []
    selfs = [p.degraded.name for p in pairs if p.degraded is not None and _same_file(p.degraded, p.clean)]
    if selfs:
        problems.append(
            f"input identical to its target (would be scored against itself): {_listing([str(s) for s in selfs])}"
        )
    multi = [f"{c.name} <- {', '.join(d.name for d in ds)}" for c, ds in used.items() if len(ds) > 1]
    if multi:
        problems.append(f"several inputs match one target: {_listing(multi)}")
    if unmatched:
        problems.append(f"inputs without a target: {_listing(unmatched)}")
    orphans = [c.name for c in clean if c not in used]
    if orphans:
        problems.append(f"targets without an input: {_listing(orphans)}")
    if problems:
        raise PairingError(f"{where}cannot pair the images: " + "; ".join(problems))
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):  # e.g. rain-1.png and rain_1.png: fall back to the unique clean stems
        pairs = [ImagePair(p.clean.stem, p.clean, p.degraded) for p in pairs]
    return sorted(pairs, key=lambda p: p.name)


def _noisy_dir_names(task_params: dict) -> tuple[str, ...]:
    sigma = task_params.get("sigma")
    if sigma is None:
        return ()
    s = f"{sigma:g}" if isinstance(sigma, float) else str(sigma)
    return (f"noisy{s}", f"noisy_{s}", f"sigma{s}", f"sigma_{s}")


def detect_layout(data: str | Path, task_name: str, scale: int = 1, task_params: dict | None = None) -> Layout:
    """Find the layout of ``data`` for a task (see the module doc). Raises :class:`PairingError`/``FileNotFoundError``."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: --data not found")
    if data.is_file():
        if not is_image_file(data):
            raise PairingError(f"{data}: not an image file")
        return Layout("clean_folder", f"one clean image, degraded on the fly by {task_name}", [ImagePair(data.stem, data)])
    where = f"{data}: "

    hr = _subdir(data, ("hr",))
    if hr:
        lr_root = _subdir(data, ("lr_bicubic",))
        lr = _subdir(lr_root[0], (f"x{scale}",)) if lr_root and scale > 1 else []
        if lr:
            pairs = pair_by_name(list_images(lr[0]), list_images(hr[0]), scale, where)
            return Layout("sr_benchmark", f"{hr[0].name}/ + {lr_root[0].name}/{lr[0].name}/ (EDSR/Set5 style)", pairs)
        clean = list_images(hr[0])
        if not clean:
            raise PairingError(f"{hr[0]}: no images")
        return Layout("clean_folder", f"{hr[0].name}/ degraded on the fly by {task_name}",
                      [ImagePair(p.stem, p) for p in clean])

    clean_dirs = _subdir(data, CLEAN_DIRS)
    degraded_dirs = _subdir(data, _noisy_dir_names(task_params or {}) + DEGRADED_DIRS)
    if len(clean_dirs) > 1:
        raise PairingError(f"{where}several target folders, cannot tell which is the clean one: "
                           f"{', '.join(p.name for p in clean_dirs)}")
    if clean_dirs and degraded_dirs:
        if len(degraded_dirs) > 1:
            raise PairingError(f"{where}several input folders, cannot tell which to use: "
                               f"{', '.join(p.name for p in degraded_dirs)}")
        (c,), (d,) = clean_dirs, degraded_dirs
        if _same_file(c, d):
            raise PairingError(f"{where}{d.name}/ and {c.name}/ are the same folder: inputs would be scored against themselves")
        pairs = pair_by_name(list_images(d), list_images(c), scale, where)
        return Layout("paired_folders", f"{d.name}/ + {c.name}/ (paired by name)", pairs)
    if degraded_dirs and not clean_dirs:
        raise PairingError(f"{where}input folder {degraded_dirs[0].name}/ but no target folder "
                           f"(one of {', '.join(CLEAN_DIRS)})")
    if clean_dirs:
        clean = list_images(clean_dirs[0])
        if not clean:
            raise PairingError(f"{clean_dirs[0]}: no images")
        return Layout("clean_folder", f"{clean_dirs[0].name}/ degraded on the fly by {task_name}",
                      [ImagePair(p.stem, p) for p in clean])

    images = list_images(data)
    if not images:
        raise PairingError(f"{where}no images and no known benchmark layout (HR/ + LR_bicubic/X{scale}/, "
                           f"{'/'.join(DEGRADED_DIRS[:3])}/ + {'/'.join(CLEAN_DIRS[:3])}/, rain-*/norain-* files)")
    prefixed = [p for p in images if _PREFIX_RE.match(p.stem)]
    if prefixed:
        degraded = [p for p in images if re.match(r"^rain(?:y)?[-_]", p.stem, re.IGNORECASE)]
        clean = [p for p in images if p not in degraded]
        if not degraded:
            raise PairingError(f"{where}target files (norain-*) but no rain-* inputs")
        pairs = pair_by_name(degraded, clean, scale, where)
        return Layout("flat_prefix", "rain-*/norain-* files (Rain100L style, paired by name)", pairs)
    return Layout("clean_folder", f"images degraded on the fly by {task_name}", [ImagePair(p.stem, p) for p in images])


def modcrop_size(h: int, w: int, scale: int) -> tuple[int, int]:
    """The size of a clean image cropped to a multiple of ``scale`` (as the SR benchmarks do)."""
    return h - h % scale, w - w % scale


def check_sizes(pairs: list[ImagePair], scale: int) -> None:
    """Every file is readable and every degraded input is the clean size / ``scale`` (after modcrop); raises
    :class:`PairingError` listing every unreadable file and mismatched pair."""
    unreadable: list[str] = []
    mismatched: list[str] = []
    for p in pairs:
        try:
            ch, cw = image_size(p.clean)
            if p.degraded is None:
                if min(ch, cw) < scale:
                    mismatched.append(f"{p.clean.name} ({ch}x{cw} is too small for x{scale})")
                continue
            dh, dw = image_size(p.degraded)
        except ImageReadError as exc:
            unreadable.append(f"{exc.path.name if exc.path else p.clean.name} ({exc.detail})")
            continue
        mh, mw = modcrop_size(ch, cw, scale)
        if (dh * scale, dw * scale) != (mh, mw):
            want = f"{mh // scale}x{mw // scale}"
            mismatched.append(f"{p.degraded.name} is {dh}x{dw}, {p.clean.name} is {ch}x{cw} (expected input {want})")
    problems = []
    if unreadable:
        problems.append(f"unreadable: {_listing(unreadable)}")
    if mismatched:
        problems.append(f"mismatched sizes: {_listing(mismatched)}")
    if problems:
        raise PairingError("; ".join(problems))

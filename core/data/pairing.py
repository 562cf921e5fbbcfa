"""Finding (degraded, clean) image pairs in a ``--data`` folder: one implementation for ``ipt train`` and ``ipt eval``.

:func:`detect_layout` asks every dataset layout registered by plugins (hook ``ipt_register_dataset_layouts``;
the built-in ones are in :mod:`ipt.plugins.layouts`: EDSR/Set5 ``HR/`` + ``LR_bicubic/X{s}/``, paired subfolders
such as ``rain/`` + ``norain/``, Rain100L flat ``rain-*``/``norain-*``) whether it recognises the folder:

* exactly one layout recognises it: its pairs are used;
* several do: :class:`PairingError` naming the layouts and their plugins (the folder is ambiguous);
* none does: the images directly in the folder (or the one image given) are clean images that the task's
  ``degrade`` turns into inputs on the fly (layout ``clean_folder``).

The helpers a layout needs are here too: :func:`pair_by_name` (names after stripping ``rain-``/``norain-`` style
prefixes and an ``x{s}`` suffix, one input per target), :func:`pair_by_key` (any key function, optionally several
inputs per target, as RESIDE's ``hazy/0001_0.8_0.2.png`` <-> ``clear/0001.png``), :func:`subfolders`, and
:func:`check_sizes` (every input is the target size / scale). Pairing fails loudly (:class:`PairingError`, with the
files) on unmatched or ambiguous names and when an input would be paired with itself (the same file, or a
byte-identical copy: the trap of the official Rain100L reader on a flat folder).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ipt.core.images.io import ImageReadError, image_size, is_image_file, list_images
from ipt.registry import DatasetLayout, ImagePair, LayoutMatch, PairingError, TaskSpec, get_registry, get_task

__all__ = [
    "ImagePair", "Layout", "LayoutMatch", "PairingError", "CLEAN_FOLDER", "detect_layout", "match_layout", "pair_by_name",
    "pair_by_key", "subfolders", "same_file", "listing", "check_sizes", "modcrop_size", "list_images",
]

CLEAN_FOLDER = "clean_folder"
_SHOWN = 20
_PREFIX_RE = re.compile(r"^(?:no)?rain(?:y)?[-_]|^(?:clean|gt)[-_]", re.IGNORECASE)
_SUFFIX_RE = re.compile(r"[-_]?x\d+$", re.IGNORECASE)


@dataclass
class Layout:
    """What :func:`detect_layout` found: the layout ``kind`` (its name), a one-line description, the pairs
    (sorted by name) and the plugin that provides the layout (``None`` for the clean-folder fallback)."""

    kind: str
    description: str
    pairs: list[ImagePair] = field(default_factory=list)
    plugin: str | None = None

    @property
    def synthetic(self) -> bool:
        """True when every input is made on the fly (no stored degraded files)."""
        return all(p.degraded is None for p in self.pairs)

    def summary(self) -> dict[str, object]:
        """JSON-friendly record (for the run's config and logs)."""
        return {"layout": self.kind, "description": self.description, "plugin": self.plugin,
                "pairs": sum(p.degraded is not None for p in self.pairs),
                "clean_images": len({p.clean for p in self.pairs})}


def listing(items: Sequence[str], shown: int = _SHOWN) -> str:
    """``a, b, c, ... (N in all)``: at most ``shown`` names of a list of files for a one-line message."""
    text = ", ".join(items[:shown])
    return text + (f", ... ({len(items)} in all)" if len(items) > shown else "")


def _short(path: Path) -> str:
    """``folder/file.png``: enough to tell an input from a target of the same name."""
    return f"{path.parent.name}/{path.name}"


def subfolders(parent: Path, names: Sequence[str]) -> list[Path]:
    """Subfolders of ``parent`` whose lower-cased name is in ``names`` (in the order of ``names``)."""
    found = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()} if parent.is_dir() else {}
    return [found[n] for n in names if n in found]


def strip_prefix(stem: str) -> str:
    """``norain-12`` -> ``12`` (the ``rain-``/``rainy-``/``norain-``/``clean-``/``gt-`` prefixes)."""
    return _PREFIX_RE.sub("", stem)


def _keys(stem: str, scale: int) -> list[str]:
    """Name keys of a file, most specific first: the stem, then without prefix / ``x{s}`` suffix / both."""
    suffix_re = re.compile(rf"[-_]?x{scale}$", re.IGNORECASE) if scale > 1 else _SUFFIX_RE
    no_prefix = strip_prefix(stem)
    keys = [stem, no_prefix, suffix_re.sub("", stem), suffix_re.sub("", no_prefix)]
    return list(dict.fromkeys(k for k in keys if k))


def same_file(a: Path, b: Path) -> bool:
    """The same file or folder, or two files with identical bytes."""
    try:
        if a.resolve() == b.resolve() or a.samefile(b):
            return True
        if a.is_dir() or b.is_dir() or a.stat().st_size != b.stat().st_size:
            return False
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _problems(pairs: list[ImagePair], used: dict[Path, list[Path]], unmatched: list[str], clean: list[Path],
              many_per_target: bool) -> list[str]:
    problems: list[str] = []
    selfs = [p.degraded.name for p in pairs if p.degraded is not None and same_file(p.degraded, p.clean)]
    if selfs:
        problems.append(f"input identical to its target (would be scored against itself): {listing(selfs)}")
    if not many_per_target:
        multi = [f"{c.name} <- {', '.join(d.name for d in ds)}" for c, ds in used.items() if len(ds) > 1]
        if multi:
            problems.append(f"several inputs match one target: {listing(multi)}")
    if unmatched:
        problems.append(f"inputs without a target: {listing(unmatched)}")
    orphans = [c.name for c in clean if c not in used]
    if orphans:
        problems.append(f"targets without an input: {listing(orphans)}")
    return problems


def pair_by_name(degraded: list[Path], clean: list[Path], scale: int = 1, where: str = "") -> list[ImagePair]:
    """Pair degraded and clean files by name, one input per target (see the module doc); raises
    :class:`PairingError` with the lists of unmatched, ambiguous and self-paired files."""
    index: dict[str, Path | None] = {}  # key -> clean file, None if the key is ambiguous
    exact = {c.stem: c for c in clean}
    for c in clean:
        for k in _keys(c.stem, scale):
            index[k] = c if index.get(k, c) == c else None
    used: dict[Path, list[Path]] = {}
    pairs: list[ImagePair] = []
    unmatched: list[str] = []
    for d in degraded:
        match = exact.get(d.stem) or next((index[k] for k in _keys(d.stem, scale) if index.get(k)), None)
        if match is None:
            unmatched.append(d.name)
            continue
        used.setdefault(match, []).append(d)
        pairs.append(ImagePair(name=strip_prefix(match.stem) or match.stem, clean=match, degraded=d))
    problems = _problems(pairs, used, unmatched, clean, many_per_target=False)
    if problems:
        raise PairingError(f"{where}cannot pair the images: " + "; ".join(problems))
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):  # e.g. rain-1.png and rain_1.png: fall back to the unique clean stems
        pairs = [ImagePair(p.clean.stem, p.clean, p.degraded) for p in pairs]
    return sorted(pairs, key=lambda p: p.name)


def pair_by_key(
    degraded: list[Path], clean: list[Path], key: Callable[[Path], str], where: str = "", many_per_target: bool = True
) -> list[ImagePair]:
    """Pair each degraded file with the clean file whose stem is ``key(degraded_file)``.

    With ``many_per_target`` several inputs may share one target (RESIDE: ``0001_0.8_0.2.png`` and
    ``0001_0.9_0.1.png`` -> ``0001.png``); pairs are named by the input's stem then. Raises :class:`PairingError`
    listing inputs without a target, targets without an input and inputs identical to their target.
    """
    by_stem = {c.stem: c for c in clean}
    used: dict[Path, list[Path]] = {}
    pairs: list[ImagePair] = []
    unmatched: list[str] = []
    for d in degraded:
        match = by_stem.get(key(d))
        if match is None:
            unmatched.append(d.name)
            continue
        used.setdefault(match, []).append(d)
        pairs.append(ImagePair(name=d.stem if many_per_target else match.stem, clean=match, degraded=d))
    problems = _problems(pairs, used, unmatched, clean, many_per_target)
    if problems:
        raise PairingError(f"{where}cannot pair the images: " + "; ".join(problems))
    return sorted(pairs, key=lambda p: p.name)


# -- detection --------------------------------------------------------------------------------------------------
def _clean_folder(data: Path, spec: TaskSpec, layouts: list[DatasetLayout]) -> Layout:
    images = list_images(data)
    if not images:
        known = "; ".join(f"{lay.name} ({lay.description})" for lay in layouts) or "none"
        raise PairingError(f"{data}: no images in the folder and no known layout recognises it. Layouts: {known}")
    return Layout(CLEAN_FOLDER, f"images degraded on the fly by {spec.name}", [ImagePair(p.stem, p) for p in images])


def _ask(layout: DatasetLayout, data: Path, spec: TaskSpec) -> Layout | None:
    try:
        match = layout.find(data, spec)
    except PairingError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's bug is reported with its name
        raise PairingError(f"{data}: {layout.origin} failed: {type(exc).__name__}: {exc}") from exc
    if match is None:
        return None
    if not isinstance(match, LayoutMatch) or not match.pairs:
        raise PairingError(f"{data}: {layout.origin} recognised the folder but returned no pairs")
    pairs = sorted(match.pairs, key=lambda p: p.name)
    names = [p.name for p in pairs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise PairingError(f"{data}: {layout.origin} gave several pairs the same name: {listing(dup)}")
    return Layout(layout.name, match.description, pairs, layout.plugin)


def match_layout(data: str | Path, task: TaskSpec | str) -> Layout | None:
    """The registered layout that recognises the folder ``data`` for ``task``, or ``None`` if none does.

    Raises :class:`PairingError` when several layouts recognise it, or when the one that does finds it broken.
    """
    spec = get_task(task) if isinstance(task, str) else task
    data = Path(data)
    found = [m for m in (_ask(lay, data, spec) for lay in get_registry().layouts.values()) if m is not None]
    if len(found) > 1:
        claims = ", ".join(f"{m.kind} (plugin {m.plugin!r}: {m.description})" for m in found)
        raise PairingError(f"{data}: several dataset layouts recognise this folder, cannot tell which to use: {claims}")
    return found[0] if found else None


def detect_layout(data: str | Path, task: TaskSpec | str) -> Layout:
    """The layout of ``data`` for ``task`` (see the module doc).

    Raises ``FileNotFoundError`` if ``data`` does not exist and :class:`PairingError` (one line, naming files,
    layouts or plugins) for a folder that cannot be paired, is claimed by several layouts, or has no images.
    """
    spec = get_task(task) if isinstance(task, str) else task
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: --data not found")
    if data.is_file():
        if not is_image_file(data):
            raise PairingError(f"{data}: not an image file")
        return Layout(CLEAN_FOLDER, f"one clean image, degraded on the fly by {spec.name}", [ImagePair(data.stem, data)])
    found = match_layout(data, spec)
    return found if found is not None else _clean_folder(data, spec, list(get_registry().layouts.values()))


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
            mismatched.append(f"{_short(p.degraded)} {dh}x{dw} vs {_short(p.clean)} {ch}x{cw} "
                              f"(expected input {mh // scale}x{mw // scale})")
    problems = []
    if unreadable:
        problems.append(f"unreadable: {listing(unreadable)}")
    if mismatched:
        problems.append(f"{len(mismatched)} of {len(pairs)} pairs have sizes that do not match x{scale}: "
                        f"{listing(mismatched, shown=5)}")
    if problems:
        raise PairingError("; ".join(problems))

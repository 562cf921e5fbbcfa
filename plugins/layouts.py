"""Built-in plugin: the benchmark folder layouts that ``ipt train`` and ``ipt eval`` recognise.

* ``sr_benchmark`` (EDSR / DIV2K / Set5 style): ``DIR/HR/`` + ``DIR/LR_bicubic/X{s}/`` for an SR task of scale
  ``s``; LR files are named like their HR file with an ``x{s}`` suffix (``babyx2.png`` for ``baby.png``) or
  identically. Without ``LR_bicubic/X{s}/``, ``HR/`` is a clean folder (inputs made by the task's bicubic).
* ``paired_folders``: one clean folder (``norain``, ``target``, ``gt``, ``clean``, ``original``, ``original_png``,
  ``sharp``, ``label``, ..., case-insensitive) and one degraded folder (``rainy``, ``rain``, ``input``, ``lq``,
  ``degraded``, ``blur``, ``noisy``; for ``denoise<sigma>`` also ``noisy<sigma>``, ``noisy_<sigma>``,
  ``sigma<sigma>`` as the CBSD68 packages ship them), paired by name. A clean folder without a degraded one for
  the task is a clean folder (inputs made on the fly).
* ``flat_prefix`` (Rain100L flat): ``rain-XXX.png`` next to ``norain-XXX.png`` in ``DIR`` (also ``rainy-``;
  clean ``clean-``/``gt-``).

Registered through the entry point ``layouts`` of ``ipt-framework``, exactly as a third-party layout would be.
"""

from __future__ import annotations

import re
from pathlib import Path

from ipt.core.data.pairing import list_images, pair_by_name, same_file, subfolders
from ipt.registry import DatasetLayout, ImagePair, LayoutMatch, PairingError, TaskSpec, hookimpl

__all__ = ["CLEAN_DIRS", "DEGRADED_DIRS", "ipt_register_dataset_layouts"]

CLEAN_DIRS = ("norain", "target", "targets", "gt", "groundtruth", "clean", "original", "original_png", "sharp", "label")
DEGRADED_DIRS = ("rainy", "rain", "input", "inputs", "lq", "degraded", "blur", "blurry", "noisy")
_DEGRADED_PREFIX = re.compile(r"^rain(?:y)?[-_]", re.IGNORECASE)
_ANY_PREFIX = re.compile(r"^(?:no)?rain(?:y)?[-_]|^(?:clean|gt)[-_]", re.IGNORECASE)


def _clean_images(folder: Path, spec: TaskSpec) -> LayoutMatch:
    images = list_images(folder)
    if not images:
        raise PairingError(f"{folder}: no images")
    return LayoutMatch(f"{folder.name}/ degraded on the fly by {spec.name}", [ImagePair(p.stem, p) for p in images])


def find_sr_benchmark(data: Path, spec: TaskSpec) -> LayoutMatch | None:
    hr = subfolders(data, ("hr",))
    if not hr:
        return None
    lr_root = subfolders(data, ("lr_bicubic",))
    lr = subfolders(lr_root[0], (f"x{spec.scale}",)) if lr_root and spec.scale > 1 else []
    if not lr:
        return _clean_images(hr[0], spec)
    pairs = pair_by_name(list_images(lr[0]), list_images(hr[0]), spec.scale, f"{data}: ")
    return LayoutMatch(f"{hr[0].name}/ + {lr_root[0].name}/{lr[0].name}/ (EDSR/Set5 style)", pairs)


def _noisy_dir_names(params: dict) -> tuple[str, ...]:
    sigma = params.get("sigma")
    if sigma is None:
        return ()
    s = f"{sigma:g}" if isinstance(sigma, float) else str(sigma)
    return (f"noisy{s}", f"noisy_{s}", f"sigma{s}", f"sigma_{s}")


def find_paired_folders(data: Path, spec: TaskSpec) -> LayoutMatch | None:
    where = f"{data}: "
    clean_dirs = subfolders(data, CLEAN_DIRS)
    degraded_dirs = subfolders(data, _noisy_dir_names(spec.params) + DEGRADED_DIRS)
    if not clean_dirs and not degraded_dirs:
        return None
    if len(clean_dirs) > 1:
        raise PairingError(f"{where}several target folders, cannot tell which is the clean one: "
                           f"{', '.join(p.name for p in clean_dirs)}")
    if not clean_dirs:
        raise PairingError(f"{where}input folder {degraded_dirs[0].name}/ but no target folder "
                           f"(one of {', '.join(CLEAN_DIRS)})")
    if not degraded_dirs:
        return _clean_images(clean_dirs[0], spec)
    if len(degraded_dirs) > 1:
        raise PairingError(f"{where}several input folders, cannot tell which to use: "
                           f"{', '.join(p.name for p in degraded_dirs)}")
    (c,), (d,) = clean_dirs, degraded_dirs
    if same_file(c, d):
        raise PairingError(f"{where}{d.name}/ and {c.name}/ are the same folder: inputs would be scored against themselves")
    pairs = pair_by_name(list_images(d), list_images(c), spec.scale, where)
    return LayoutMatch(f"{d.name}/ + {c.name}/ (paired by name)", pairs)


def find_flat_prefix(data: Path, spec: TaskSpec) -> LayoutMatch | None:
    images = list_images(data)
    if not any(_ANY_PREFIX.match(p.stem) for p in images):
        return None
    degraded = [p for p in images if _DEGRADED_PREFIX.match(p.stem)]
    clean = [p for p in images if p not in degraded]
    if not degraded:
        raise PairingError(f"{data}: target files (norain-*) but no rain-* inputs")
    pairs = pair_by_name(degraded, clean, spec.scale, f"{data}: ")
    return LayoutMatch("rain-*/norain-* files (Rain100L style, paired by name)", pairs)


@hookimpl
def ipt_register_dataset_layouts() -> list[DatasetLayout]:
    return [
        DatasetLayout(name="sr_benchmark", description="HR/ + LR_bicubic/X{s}/ (EDSR, DIV2K, Set5)",
                      find=find_sr_benchmark),
        DatasetLayout(name="paired_folders", description="input folder (rain/, input/, lq/, blur/, noisy<sigma>/...) "
                      "+ target folder (norain/, target/, gt/, clean/, sharp/...), paired by name",
                      find=find_paired_folders),
        DatasetLayout(name="flat_prefix", description="rain-*/norain-* files in one folder (Rain100L)",
                      find=find_flat_prefix),
    ]

"""Where training images come from: HuggingFace ``datasets`` sources with an undecoded image column.

:func:`load_images` turns ``--data`` into an :class:`ImageSource`: the built-in photos (``None``), a local image
folder (``imagefolder``), a local csv/parquet/json/arrow file or folder, or a Hub dataset name (optionally
streamed).  The image column is cast to ``Image(decode=False)`` so records stay ``{"path", "bytes"}`` dicts and
:mod:`ipt.core.images.decode` decodes them, counting bad files instead of crashing inside ``datasets``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipt.core.images.decode import ImageRecord
from ipt.core.images.io import IMAGE_EXTENSIONS

__all__ = ["IMAGE_EXTENSIONS", "ImageSource", "load_images", "as_source"]

# Local data files that ``datasets`` reads with a packaged builder (a column of image paths/bytes inside).
_FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
    ".tar": "webdataset",  # webdataset shards: one sample per file stem, images as jpg/png/... columns
}
_HOLDOUT_SPLITS = ("validation", "test")


@dataclass
class ImageSource:
    """A dataset whose ``image_column`` holds undecoded images (``{"path": ..., "bytes": ...}`` records).

    ``dataset`` is a ``datasets.Dataset`` (random access) or, for streaming, a ``datasets.IterableDataset``.
    """

    name: str
    dataset: Any
    image_column: str = "image"

    @property
    def streaming(self) -> bool:
        import datasets

        return isinstance(self.dataset, datasets.IterableDataset)

    def __len__(self) -> int:
        if self.streaming:
            raise TypeError(f"dataset {self.name}: a streaming dataset has no length")
        return len(self.dataset)

    def record(self, index: int) -> dict:
        return self.dataset[index][self.image_column]

    def describe(self, record: ImageRecord, index: int | None = None) -> str:
        """A path for log messages (or ``name[index]`` for images stored as bytes)."""
        if isinstance(record, dict) and record.get("path"):
            return str(record["path"])
        if isinstance(record, (str, Path)):
            return str(record)
        return f"{self.name}[{index}]" if index is not None else self.name

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], name: str = "images") -> "ImageSource":
        """A source over image files (absolute paths, so DataLoader workers resolve them anywhere)."""
        import datasets

        files = [str(Path(p).expanduser().resolve()) for p in paths]
        if not files:
            raise ValueError(f"dataset {name} is empty")
        ds = datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image(decode=False))
        return cls(name=name, dataset=ds, image_column="image")

    @classmethod
    def from_dataset(cls, dataset: Any, name: str, image_column: str | None = None) -> "ImageSource":
        """Wrap a ``datasets`` dataset: find the image column, keep only it, turn decoding off."""
        import datasets

        features = dataset.features
        columns = list(dataset.column_names or (features.keys() if features else []))
        if image_column is not None:
            if columns and image_column not in columns:
                raise ValueError(f"dataset {name} has no column {image_column!r}; columns: {', '.join(columns)}")
            column = image_column
        else:
            if features is None:
                raise ValueError(
                    f"cannot detect the image column of dataset {name} (its features are unknown until read); "
                    "pass --image-column"
                )
            found = [c for c, f in features.items() if isinstance(f, datasets.Image)]
            if not found:
                raise ValueError(
                    f"dataset {name} has no image column; columns: {', '.join(columns) or '(none)'}; "
                    "pass --image-column"
                )
            column = found[0]
        dataset = dataset.select_columns([column])
        try:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        except Exception as exc:  # e.g. an integer column named by --image-column
            raise ValueError(f"dataset {name}: column {column!r} does not hold images ({exc})") from exc
        source = cls(name=name, dataset=dataset, image_column=column)
        if not source.streaming and len(dataset) == 0:
            raise ValueError(f"dataset {name} is empty")
        return source


def _has_image_file(folder: Path) -> bool:
    for _root, _dirs, files in os.walk(folder):
        if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            return True
    return False


def _has_any_file(folder: Path) -> bool:
    return any(files for _root, _dirs, files in os.walk(folder))


def _looks_like_local_path(data: str) -> bool:
    # Hub names look like "owner/name"; anything anchored or with a file suffix is meant as a local path.
    return data.startswith(("/", "./", "../", "~")) or Path(data).suffix.lower() in (
        IMAGE_EXTENSIONS | set(_FILE_BUILDERS)
    )


def _load_dataset(
    data: str, builder: str, split: str | None, streaming: bool, cache_dir: str | None, **kwargs: Any
) -> Any:
    """``datasets.load_dataset(builder, ...)`` with its failures turned into one-line errors naming ``data``."""
    import datasets

    try:
        return datasets.load_dataset(builder, split=split, streaming=streaming, cache_dir=cache_dir, **kwargs)
    except Exception as exc:
        hint = "" if Path(data).expanduser().exists() else (
            " (not a local folder or file, and loading it from the Hugging Face Hub failed: no internet? "
            "datasets downloaded earlier load with HF_DATASETS_OFFLINE=1)"
        )
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"could not load dataset {data}{hint}: {message}") from exc


def load_images(
    data: str | os.PathLike[str] | None = None,
    split: str = "train",
    image_column: str | None = None,
    streaming: bool = False,
    holdout: bool = False,
    cache_dir: str | None = None,
) -> ImageSource:
    """The images to train (or validate) on.

    * ``data=None``: the built-in photos (:mod:`ipt.core.images.photos`): all but the held-out ones, or with
      ``holdout=True`` the held-out ones.
    * a local folder of images: ``datasets``' ``imagefolder`` (no split subfolders -> everything is ``train``);
      a local folder/file of csv/parquet/json/arrow data or of webdataset ``.tar`` shards: the matching packaged
      builder (with ``streaming=True`` the shards are split by node and DataLoader worker);
    * anything else: a HuggingFace Hub dataset name, ``load_dataset(data, split=split, streaming=streaming)``.

    ``holdout=True`` with ``data`` picks the dataset's ``validation`` (else ``test``) split instead of ``split``.
    The image column is ``image_column`` or the first column whose feature is ``datasets.Image``.
    """
    import datasets

    if data is None:
        from ipt.core.images.photos import heldout_photos, train_photos

        paths = heldout_photos() if holdout else train_photos()
        source = ImageSource.from_paths(paths, name="built-in photos" + (" (held out)" if holdout else ""))
        if streaming:
            source.dataset = source.dataset.to_iterable_dataset(num_shards=len(paths))
        return source

    data = os.fspath(data)
    path = Path(data).expanduser()
    builder, kwargs = data, {}  # default: a Hub dataset name
    if path.is_dir():
        if _has_image_file(path):
            builder, kwargs = "imagefolder", {"data_dir": str(path)}
        elif not _has_any_file(path):
            raise ValueError(f"dataset {data} is empty (no files in the folder)")
        else:  # csv/parquet/json files: datasets infers the builder
            builder = str(path)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in _FILE_BUILDERS:
            builder, kwargs = _FILE_BUILDERS[suffix], {"data_files": str(path)}
        elif suffix in IMAGE_EXTENSIONS:
            builder, kwargs = "imagefolder", {"data_files": str(path)}
        else:
            raise ValueError(
                f"dataset {data}: unsupported file type {suffix!r}; give a folder of images or a "
                f"{'/'.join(sorted(_FILE_BUILDERS))} file"
            )
    elif _looks_like_local_path(data):
        raise FileNotFoundError(f"dataset {data}: no such file or folder")

    if holdout:
        splits = _load_dataset(data, builder, None, streaming, cache_dir, **kwargs)
        chosen = next((s for s in _HOLDOUT_SPLITS if s in splits), None)
        if chosen is None:
            raise ValueError(
                f"dataset {data} has no held-out split ({' or '.join(_HOLDOUT_SPLITS)}); splits: "
                f"{', '.join(splits)}; give validation images separately"
            )
        dataset = splits[chosen]
    else:
        dataset = _load_dataset(data, builder, split, streaming, cache_dir, **kwargs)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):  # pragma: no cover - split given
        raise ValueError(f"dataset {data}: choose a split: {', '.join(dataset)}")
    return ImageSource.from_dataset(dataset, name=data, image_column=image_column)


def as_source(images: ImageSource | Sequence[str | Path] | str | os.PathLike[str] | None) -> ImageSource:
    """Accept an :class:`ImageSource`, a list of image paths, a dataset name/folder, or None (built-in photos)."""
    if isinstance(images, ImageSource):
        return images
    if images is None or isinstance(images, (str, os.PathLike)):
        return load_images(images)
    return ImageSource.from_paths(list(images))

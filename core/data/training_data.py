"""The data of one training run, found from its options: which images or stored pairs each task trains on.

:meth:`TrainingData.open` runs before the model exists (the number of images sets the epoch length). For each
task it looks at the task's data (``task_data[task]``, else ``data``):

* nothing: the built-in photos, degraded on the fly;
* a local folder that a registered dataset layout recognises (:func:`ipt.core.data.pairing.match_layout`, the
  detection ``ipt eval`` uses): its stored pairs (sizes checked against the task's scale) or, for a layout of clean
  images (``HR/`` alone), those images;
* anything else (a folder of photos, searched recursively; parquet/csv/json/arrow files; webdataset ``.tar``
  shards; a Hub name): a ``datasets`` source (:func:`ipt.core.data.sources.load_images`), optionally streamed.

:meth:`TrainingData.batches` then builds :class:`~ipt.core.data.batches.TrainBatches` (or the streaming variant)
and :meth:`TrainingData.validation` the fixed validation patches. Tasks with the same data share one source, so
its images are decoded once. ``options`` is any object with the fields of ``TrainConfig`` used here (``data``,
``task_data``, ``synthetic_ratio``, ``data_split``, ``image_column``, ``streaming``, ``crops_per_image``,
``color_augment``, ``val_patches``), so this module does not depend on the training package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipt.core.data.batches import StreamingTrainBatches, TaskData, TrainBatches, validation_pairs
from ipt.core.data.pairing import Layout, PairingError, check_sizes, match_layout
from ipt.core.data.schedule import TaskSchedule
from ipt.core.data.sources import ImageSource, load_images
from ipt.registry import TaskSpec, get_task

__all__ = ["TrainingData"]


@dataclass
class TrainingData:
    """Per-task :class:`TaskData`, where it came from, and the sources' sizes."""

    tasks: dict[str, TaskData]
    origin: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> {data, layout, pairs|images}
    streaming: bool = False
    options: Any = None

    # -- opening ---------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, options: Any, tasks: list[str] | None = None) -> "TrainingData":
        """Find every task's data (see the module doc). Raises ``PairingError``/``ValueError``/``FileNotFoundError``
        with one line naming the task, the folder and the files."""
        names = list(tasks if tasks is not None else options.tasks)
        per_task = dict(getattr(options, "task_data", None) or {})
        unknown = sorted(set(per_task) - set(names))
        if unknown:
            raise ValueError(f"--task-data names tasks that are not trained: {', '.join(unknown)} "
                             f"(--tasks {','.join(names)})")
        found = cls(tasks={}, streaming=bool(options.streaming), options=options)
        sources: dict[str, ImageSource] = {}
        for name in names:
            data = per_task.get(name, options.data)
            found._open_task(get_task(name), None if data is None else str(data), sources)
        return found

    def _open_task(self, spec: TaskSpec, data: str | None, sources: dict[str, ImageSource]) -> None:
        opts = self.options
        layout = self._layout(spec, data)
        if layout is not None and not layout.synthetic:
            if self.streaming:
                raise ValueError(f"{spec.name}: --data {data} holds stored pairs ({layout.description}); "
                                 "stored pairs are read from the folder, not streamed: leave out --streaming")
            try:
                check_sizes(layout.pairs, spec.scale)
            except PairingError as exc:
                raise PairingError(f"{spec.name}: {data} ({layout.description}): {exc}; give this task its own "
                                   f"data with --task-data {spec.name}=DIR") from None
            pairs = [p for p in layout.pairs if p.degraded is not None]
            self.tasks[spec.name] = TaskData(pairs=pairs, synthetic_ratio=opts.synthetic_ratio, name=str(data))
            self.origin[spec.name] = {"data": data, **layout.summary()}
            return
        key = f"{data}\0{layout.kind}" if layout is not None else str(data)
        if key not in sources:
            if layout is not None:  # a layout of clean images only (HR/ without LR_bicubic/X{s}/, norain/ alone)
                sources[key] = ImageSource.from_paths([p.clean for p in layout.pairs], name=f"{data} ({layout.kind})")
            else:
                sources[key] = load_images(data, split=opts.data_split, image_column=opts.image_column,
                                           streaming=self.streaming)
        self.tasks[spec.name] = TaskData(images=sources[key], name=sources[key].name)
        self.origin[spec.name] = {"data": data, "layout": layout.kind if layout else "images",
                                  "description": layout.description if layout else "clean images degraded on the fly",
                                  "images": _count(sources[key])}

    @staticmethod
    def _layout(spec: TaskSpec, data: str | None) -> Layout | None:
        if data is None:
            return None
        path = Path(data).expanduser()
        return match_layout(path, spec) if path.is_dir() else None

    # -- what was found ----------------------------------------------------------------------------------------
    @property
    def num_images(self) -> int | None:
        """Training items of all tasks (pairs count once, a shared source once); ``None`` when streamed."""
        total, seen = 0, set()
        for task, td in self.tasks.items():
            key = id(td.images) if td.pairs is None else ("pairs", task)
            if key in seen:
                continue
            seen.add(key)
            n = len(td.pairs) if td.pairs is not None else _count(td.images)
            if n is None:
                return None
            total += n
        return total

    def summary(self) -> str:
        """One line for the start of training: per group of tasks, what they train on."""
        groups: dict[str, list[str]] = {}
        for task, o in self.origin.items():
            what = (f"{o['pairs']} pairs ({o['layout']}: {o['description']})" if "pairs" in o
                    else f"{o['images'] if o['images'] is not None else 'streamed'} images"
                    + (f" ({o['layout']})" if o["layout"] != "images" else ""))
            where = o["data"] or "built-in photos"
            groups.setdefault(f"{what} from {where}", []).append(task)
        return "; ".join(f"{', '.join(tasks)}: {what}" for what, tasks in groups.items())

    def record(self) -> dict[str, Any]:
        """JSON-friendly description for the run's records (layout, pair/image counts per task)."""
        opts = self.options
        return {"tasks": self.origin, "synthetic_ratio": opts.synthetic_ratio,
                "crops_per_image": opts.crops_per_image, "color_augment": opts.color_augment}

    # -- building ----------------------------------------------------------------------------------------------
    def batches(self, specs: list[TaskSpec], schedule: TaskSchedule, start_step: int = 0, **common: Any) -> Any:
        """The training batches (``common``: batch_size, patch_size, seed, rank, world_size, augment, steps)."""
        opts = self.options
        extra = {"crops_per_image": opts.crops_per_image, "color_augment": opts.color_augment}
        if self.streaming:
            sources = {id(td.images): td.images for td in self.tasks.values()}
            if len(sources) > 1:
                raise ValueError("--streaming trains every task on one dataset: leave out --task-data")
            (source,) = sources.values()
            return StreamingTrainBatches(source, specs, schedule, start_step=start_step, **extra, **common)
        return TrainBatches(None, specs, schedule, task_data=self.tasks, **extra, **common)

    def validation(self, specs: list[TaskSpec], patch_size: int) -> tuple[dict[str, Any], list[str]]:
        """Validation patches ``{task: (lr, hr)}`` from the held-out split of each task's image data (the held-out
        built-in photos without ``--data``), and notes on the tasks left without validation."""
        opts = self.options
        pairs: dict[str, Any] = {}
        notes: list[str] = []
        groups: dict[str | None, list[TaskSpec]] = {}
        for spec in specs:
            o = self.origin[spec.name]
            if "pairs" in o or o["layout"] != "images":
                notes.append(f"validation of {spec.name} disabled: {o['data']} is a {o['layout']} folder without "
                             "a held-out split")
                continue
            groups.setdefault(o["data"], []).append(spec)
        for data, group in groups.items():
            try:
                held = load_images(data, split=opts.data_split, image_column=opts.image_column,
                                   streaming=self.streaming, holdout=True)
                pairs.update(validation_pairs(held, group, patch_size=patch_size, n_per_task=opts.val_patches,
                                              seed=1234))
            except ValueError as exc:  # e.g. a dataset without a validation/test split: train anyway
                notes.append(f"validation of {', '.join(s.name for s in group)} disabled: {exc}")
        return pairs, notes


def _count(source: ImageSource | None) -> int | None:
    try:
        return len(source) if source is not None else None
    except TypeError:  # streaming
        return None

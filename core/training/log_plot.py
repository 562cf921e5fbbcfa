"""A training run's ``log.jsonl`` as a picture: loss and validation PSNR per task over steps (``ipt plot RUN_DIR``).

Reads the records :func:`ipt.core.training.run.train` writes: log steps ``{"step", "loss", "task_loss": {task:
L1}, ...}`` and validations ``{"step", "validation": true, "psnr": {task: dB}}``. Drawn with matplotlib's Agg
canvas (no display needed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ipt.core.files import atomic_write_file

LOG_NAME = "log.jsonl"


@dataclass
class LogSeries:
    """``steps``/values per series: the total loss, the loss of each task, the validation PSNR of each task."""

    loss: list[tuple[int, float]] = field(default_factory=list)
    task_loss: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    psnr: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def read_log(path: str | Path) -> LogSeries:
    """The series of a ``log.jsonl`` (a run directory or the file). Raises ``FileNotFoundError`` for a missing log,
    ``ValueError`` naming the line of a record that is not JSON or when the log has no loss and no validation."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (ipt train writes RUN_DIR/{LOG_NAME})")
    series = LogSeries()
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: not a JSON record ({exc.msg})") from exc
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        if rec.get("validation"):
            for task, value in (rec.get("psnr") or {}).items():
                series.psnr.setdefault(task, []).append((step, float(value)))
            continue
        if isinstance(rec.get("loss"), (int, float)):
            series.loss.append((step, float(rec["loss"])))
        for task, value in (rec.get("task_loss") or {}).items():
            series.task_loss.setdefault(task, []).append((step, float(value)))
    if not series.loss and not series.psnr:
        raise ValueError(f"{path}: no loss or validation records to plot")
    return series


def plot_log(series: LogSeries, path: str | Path, title: str = "") -> Path:
    """Two panels sharing the step axis: training loss (total and per task, log scale) and validation PSNR per
    task (dB). One colour per task in both panels. Written as PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_psnr = fig.subplots(2, 1, sharex=True)
    tasks = list(dict.fromkeys([*series.task_loss, *series.psnr]))
    colours = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
    for task, points in series.task_loss.items():
        ax_loss.plot(*zip(*points), color=colours[task], linewidth=1, alpha=0.8, label=task)
    if series.loss:
        ax_loss.plot(*zip(*series.loss), color="black", linewidth=1.8, label="total (L1 + contrastive)")
    if all(v > 0 for pts in [series.loss, *series.task_loss.values()] for _, v in pts):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss (L1 on 0-255)")
    ax_loss.grid(True, alpha=0.3, which="both")
    for task, points in series.psnr.items():
        finite = [(s, v) for s, v in points if math.isfinite(v)]
        if finite:
            ax_psnr.plot(*zip(*finite), color=colours[task], marker="o", markersize=3, label=task)
    ax_psnr.set_ylabel("validation PSNR (dB)")
    ax_psnr.set_xlabel("step")
    ax_psnr.grid(True, alpha=0.3)
    for ax in (ax_loss, ax_psnr):
        if ax.lines:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the lines
        else:
            ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes, color="0.5")
    ax_loss.set_title(title)
    fig.tight_layout()
    return atomic_write_file(Path(path), lambda tmp: fig.savefig(tmp, format="png"))

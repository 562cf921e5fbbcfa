"""What a training run tells the user: messages, ``log.jsonl``, trackers, the progress bar, validation image grids.

Only the main process writes or prints; every method may be called on every rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ipt.core.images.io import write_image

VALIDATION_DIR = "validation"
GAP = 2  # pixels of white between the cells of a validation grid


def validation_grid(degraded: torch.Tensor, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One row per patch: degraded | restored | target, ``(3, H, W)`` on 0-255 with white gaps.

    ``degraded`` ``(n, C, h, w)`` (RGB first; a task's extra input channels, e.g. a mask, are not drawn) is
    enlarged to the target's size by pixel repetition (nearest), so an SR input shows its real resolution;
    ``restored`` and ``target`` are ``(n, 3, H, W)`` on 0-255.
    """
    n, _, h, w = target.shape
    degraded = degraded[:n, :3].float()
    if degraded.shape[-2:] != (h, w):
        degraded = F.interpolate(degraded, size=(h, w), mode="nearest")
    grid = torch.full((3, n * h + (n + 1) * GAP, 3 * w + 4 * GAP), 255.0)
    for i in range(n):
        for j, img in enumerate((degraded[i], restored[i].float(), target[i].float())):
            top, left = GAP + i * (h + GAP), GAP + j * (w + GAP)
            grid[:, top : top + h, left : left + w] = img.clamp(0, 255)
    return grid


class RunLogger:
    """Messages, JSONL records, tracker scalars/images and the progress bar of one run.

    Messages go through ``tqdm.write`` to stderr on the main process rather than ``accelerator.print``: that is a
    plain ``print`` to stdout, which on a terminal lands inside the progress bar's line (the bar is redrawn on
    stderr), while ``tqdm.write`` clears the bar, prints the line and redraws the bar below it.
    """

    def __init__(self, accelerator: Any, run_dir: Path, trackers: bool, progress: bool, total: int, start: int
                 ) -> None:
        from tqdm.auto import tqdm

        self.acc, self.run_dir, self.trackers = accelerator, Path(run_dir), trackers
        self.main = accelerator.is_main_process
        self.log_path = self.run_dir / "log.jsonl"
        self.bar = tqdm(total=total, initial=start, disable=not (self.main and progress), dynamic_ncols=True,
                        desc="train", unit="step")

    def say(self, message: str) -> None:
        if self.main:
            from tqdm.auto import tqdm

            tqdm.write(f"[ipt train] {message}", file=sys.stderr)

    def record(self, record: dict[str, Any]) -> None:
        """Append ``record`` to ``log.jsonl``; its numbers (losses per task, PSNR per task) go to the trackers."""
        if self.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.trackers:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            for name, value in (record.get("task_loss") or {}).items():
                scalars[f"loss/{name}"] = value
            for name, value in (record.get("psnr") or {}).items():
                scalars[f"val_psnr/{name}"] = value
            self.acc.log(scalars, step=record["step"])

    def validation_images(self, step: int, grids: dict[str, torch.Tensor]) -> list[Path]:
        """Write ``validation/step-N-<task>.png`` per task, and the grids to TensorBoard when it is a tracker."""
        if not self.main:
            return []
        paths = [write_image(self.run_dir / VALIDATION_DIR / f"step-{step}-{task}.png", grid)
                 for task, grid in grids.items()]
        if self.trackers:
            for tracker in self.acc.trackers:
                if tracker.name == "tensorboard":
                    tracker.log_images({f"validation/{t}": (g / 255.0)[None] for t, g in grids.items()}, step=step)
        return paths

    def progress(self, **postfix: Any) -> None:
        self.bar.update(1)
        if postfix:
            self.bar.set_postfix(**postfix)

    def close(self) -> None:
        self.bar.close()

"""Multi-task pre-training and fine-tuning of IPT on HuggingFace Accelerate.

Runs the same way as ``ipt train ...``, ``python core/train.py ...`` and ``accelerate launch core/train.py ...``
(any number of processes, CPU or GPU). Every option is a field of :class:`~ipt.core.train_config.TrainConfig`.

One optimizer step = one task (``TaskSchedule``, a pure function of seed and step, so every rank trains the same
task) on a batch degraded on the fly by that task's plugin; loss = L1 + lambda x contrastive (``ipt.core.losses``).
Only the active task's head/tail/embedding receive gradients; DDP runs with ``find_unused_parameters=True`` so that
it does not wait for the other tasks' parameters (every rank leaves the *same* ones unused, so the reduction is
consistent) and gradients are reset to ``None`` (not zero) so Adam leaves inactive tasks untouched.

Run directory (``--output-dir``)::

    config.yaml            resolved TrainConfig (re-usable with --config)
    plugins.json           versions of the plugins that provide the tasks
    log.jsonl              one JSON object per log step and per validation
    checkpoints/step-N/    model/ (save_pretrained; EMA weights with --ema-decay) + state/ (accelerator.save_state,
                           train_state.json, ema.safetensors), written to a temporary folder and renamed
    model/                 the final model (EMA weights with --ema-decay)
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(
    os.path.abspath(__file__)
):
    sys.path.pop(0)  # run as a script, Python put core/ first on sys.path: its module names would shadow others

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterable  # noqa: E402

import torch  # noqa: E402

from ipt.core.config_cli import add_model_arguments, dump_yaml, parse_config  # noqa: E402
from ipt.core.ema import EMA  # noqa: E402
from ipt.core.losses import ipt_loss  # noqa: E402
from ipt.core.model import IPT  # noqa: E402
from ipt.core.pretrained import CheckpointError, read_config  # noqa: E402
from ipt.core.task_schedule import TaskSchedule  # noqa: E402
from ipt.core.train_config import TrainConfig  # noqa: E402

CHECKPOINTS = "checkpoints"
STEP_DIR_RE = re.compile(r"^step-(\d+)$")
TRAIN_STATE = "train_state.json"
EMA_WEIGHTS = "ema.safetensors"
TRACE_ENV = "IPT_TRAIN_TRACE"  # set to 1: each rank writes trace-rank<r>.jsonl (step, task, batch checksum)
EXIT_STOPPED = 3


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (too many non-finite losses); a checkpoint was saved."""


# -- small pieces --------------------------------------------------------------------------------------------------
class MicroBatchSchedule:
    """The task of data step ``i`` when each optimizer step consumes ``accum`` data steps (all of one task)."""

    def __init__(self, schedule: TaskSchedule, accum: int) -> None:
        self.schedule, self.accum = schedule, accum
        self.tasks = schedule.tasks

    def task_at(self, step: int) -> str:
        return self.schedule.task_at(step // self.accum)


@dataclass
class TrainState:
    """What Accelerate's ``save_state`` does not hold: position, non-finite streak, EMA weights.

    Saved as JSON + safetensors next to the accelerate state (not as pickles, which only load unsafely).
    """

    step: int = 0
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    ema: EMA | None = None

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        info = {"step": self.step, "nonfinite_streak": self.nonfinite_streak, "nonfinite_total": self.nonfinite_total}
        (directory / TRAIN_STATE).write_text(json.dumps(info) + "\n")
        if self.ema is not None:
            save_file(self.ema.state_dict(), str(directory / EMA_WEIGHTS))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        info = json.loads((directory / TRAIN_STATE).read_text())
        self.step, self.nonfinite_streak = int(info["step"]), int(info["nonfinite_streak"])
        self.nonfinite_total = int(info.get("nonfinite_total", 0))
        if self.ema is not None:
            path = directory / EMA_WEIGHTS
            if not path.is_file():
                raise CheckpointError(f"{path}: missing; the checkpoint was saved without --ema-decay")
            self.ema.load_state_dict(load_file(str(path)))


def _truncate_log(path: Path, step: int) -> None:
    """Keep only the records of steps <= ``step`` (atomically), so a resumed run does not log steps twice."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _say(accelerator: Any, message: str) -> None:
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        tqdm.write(f"[ipt train] {message}", file=sys.stderr)


def resolved_config(cfg: TrainConfig, total: int, decay_at: int | None) -> TrainConfig:
    """``cfg`` with the derived values filled in (lr, step counts): what ``config.yaml`` records."""
    return cfg.model_copy(
        update={"lr": cfg.base_lr, "max_steps": total, "epochs": None, "lr_decay_steps": decay_at or 0,
                "lr_decay_epochs": None}
    )


# -- model ---------------------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig) -> tuple[IPT, list[str]]:
    """The model to train and notes on what was kept/added (fine-tuning).

    Pre-training: a fresh model of ``preset`` + ``model`` overrides. Fine-tuning (``init_from``): the saved model's
    architecture and body; heads/tails/embeddings of requested tasks the checkpoint has are kept, missing ones are
    created fresh, the others dropped.
    """
    notes: list[str] = []
    if cfg.init_from is None:
        model = IPT(cfg.architecture(), cfg.tasks)
    else:
        saved = read_config(cfg.init_from)
        if {"preset", "model"} & cfg.model_fields_set and cfg.architecture() != saved.architecture:
            raise ValueError(
                f"--init-from {cfg.init_from}: its architecture differs from --preset {cfg.preset} "
                f"{cfg.model or ''}; leave out --preset/--model when fine-tuning (the checkpoint defines the model)"
            )
        had = [t.name for t in saved.tasks]
        kept = [t for t in cfg.tasks if t in had]
        model = IPT.from_pretrained(cfg.init_from, tasks=kept)  # dropped tasks need no plugin
        for t in cfg.tasks:
            if t not in had:
                model.add_task(t)
        # Fresh parts were appended; order the dicts like --tasks so the saved model lists them that way.
        for d in (model.heads, model.tails, model.task_embed):
            for t in cfg.tasks:
                d[t] = d.pop(t)
        notes.append(
            f"fine-tuning from {cfg.init_from}: body kept; "
            + (f"kept {', '.join(kept)}; " if kept else "")
            + (f"new {', '.join(t for t in cfg.tasks if t not in had)}; " if len(kept) < len(cfg.tasks) else "")
            + (f"dropped {', '.join(t for t in had if t not in cfg.tasks)}" if set(had) - set(cfg.tasks) else "")
        )
    if cfg.freeze == "body":
        model.body.requires_grad_(False)
        notes.append(f"body frozen: training {model.num_parameters(trainable_only=True):,} parameters")
    model.body.grad_checkpointing = cfg.grad_checkpointing
    return model, notes


# -- checkpoints ---------------------------------------------------------------------------------------------------
def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = STEP_DIR_RE.match(p.name)
            if m and (p / "state" / TRAIN_STATE).is_file() and (p / "model" / "config.json").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def find_checkpoint(resume: str, run_dir: Path) -> Path:
    """The checkpoint folder for ``--resume latest`` or ``--resume PATH`` (a checkpoint or a run directory)."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / CHECKPOINTS}; start without --resume")
        return found[-1][1]
    path = Path(resume)
    if (path / "state" / TRAIN_STATE).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    raise FileNotFoundError(
        f"--resume {resume}: not a checkpoint (step-N folder with model/ and state/) or a run directory with one"
    )


def check_resume_compatible(cfg: TrainConfig, checkpoint: Path) -> None:
    """One-line error if the checkpoint was written by a run whose model/state layout differs from ``cfg``."""
    saved = (read_config(checkpoint / "model").model_extra or {}).get("training", {}).get("config")
    if saved is None:
        raise CheckpointError(f"--resume {checkpoint}: its model/config.json has no training record")
    now = cfg.model_dump(mode="json")
    for key in (*TrainConfig.RESUME_KEYS, "ema_decay"):
        a, b = saved.get(key), now.get(key)
        if key == "ema_decay":
            a, b = a is not None, b is not None
        if a != b:
            raise ValueError(
                f"--resume {checkpoint}: the checkpoint was trained with {key}={saved.get(key)!r}, this run asks for "
                f"{key}={now.get(key)!r}; resume with the same {key} or start a new --output-dir "
                f"(use --init-from {checkpoint / 'model'} to fine-tune from it instead)"
            )


def make_accelerator(cfg: TrainConfig) -> Any:
    """The :class:`accelerate.Accelerator` of a run.

    Several processes without a GPU (``accelerate launch --multi_gpu --num_processes 2`` or ``torchrun`` on a CPU
    machine) need ``cpu=True`` for Accelerate to pick its gloo CPU backend instead of running each process alone.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=cfg.cpu or (multi_process and not torch.cuda.is_available()),
        log_with=cfg.report_to or None,
        project_dir=str(cfg.output_dir),
        step_scheduler_with_optimizer=False,  # the LambdaLR counts optimizer steps itself, once per step
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


# -- the trainer ---------------------------------------------------------------------------------------------------
@dataclass
class StepStats:
    """Losses summed on the device between two log steps (read back once per log step)."""

    loss: torch.Tensor | None = None
    l1: torch.Tensor | None = None
    con: torch.Tensor | None = None
    steps: int = 0
    per_task: dict[str, list[Any]] = field(default_factory=dict)  # task -> [loss sum tensor, count]

    def add(self, task: str, loss: torch.Tensor, l1: torch.Tensor, con: torch.Tensor) -> None:
        if self.loss is None:
            self.loss, self.l1, self.con = loss.clone(), l1.clone(), con.clone()
        else:
            self.loss += loss
            self.l1 += l1
            self.con += con
        self.steps += 1
        slot = self.per_task.setdefault(task, [torch.zeros_like(loss), 0])
        slot[0] += loss
        slot[1] += 1

    def read(self) -> dict[str, Any]:
        if not self.steps:
            return {}
        names = list(self.per_task)
        values = torch.stack([self.loss, self.l1, self.con, *(self.per_task[n][0] for n in names)]).tolist()
        out = {"loss": values[0] / self.steps, "l1": values[1] / self.steps, "contrastive": values[2] / self.steps}
        out["task_loss"] = {n: values[3 + i] / self.per_task[n][1] for i, n in enumerate(names)}
        return out


class Trainer:
    """Model, optimizer and schedule on an :class:`accelerate.Accelerator`; one call of :meth:`step` per update."""

    def __init__(
        self, cfg: TrainConfig, model: IPT, total_steps: int, decay_at: int | None, accelerator: Any = None
    ) -> None:
        self.cfg = cfg
        self.accelerator = accelerator or make_accelerator(cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(
            params, lr=cfg.base_lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cfg.lr_factor(s, total_steps, decay_at)
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.state = TrainState(ema=EMA(self.unwrapped, cfg.ema_decay) if cfg.ema_decay else None)
        self.stats = StepStats()
        self.last_lr = self.lr

    @property
    def unwrapped(self) -> IPT:
        return self.accelerator.unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def step(self, micro_batches: list[dict[str, Any]]) -> bool:
        """One optimizer step over ``micro_batches`` (all of one task). Returns False if it was skipped."""
        acc, cfg = self.accelerator, self.cfg
        task = micro_batches[0]["task"]
        n = len(micro_batches)
        total_sum = l1_sum = con_sum = None
        for i, batch in enumerate(micro_batches):
            if batch["task"] != task:
                raise RuntimeError(f"micro-batches of one step mix tasks {task!r} and {batch['task']!r}")
            lr_img = batch["lr"].to(self.device, non_blocking=True)
            hr_img = batch["hr"].to(self.device, non_blocking=True)
            sync = contextlib.nullcontext() if i == n - 1 else acc.no_sync(self.model)
            with sync:
                if cfg.contrastive_weight > 0:
                    out, tokens = self.model(lr_img, task, return_tokens=True)
                else:
                    out, tokens = self.model(lr_img, task), None
                total, l1, con = ipt_loss(out, hr_img, tokens, cfg.contrastive_weight, cfg.contrastive_temperature)
                acc.backward(total / n)
            total_sum = total.detach() if total_sum is None else total_sum + total.detach()
            l1_sum = l1.detach() if l1_sum is None else l1_sum + l1.detach()
            con_sum = con.detach() if con_sum is None else con_sum + con.detach()
        total_m, l1_m, con_m = total_sum / n, l1_sum / n, con_sum / n

        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        norm = acc.clip_grad_norm_(self.params, max_norm)
        bad = ~torch.isfinite(total_m)
        if acc.mixed_precision != "fp16" and norm is not None:
            # fp16 overflow of gradients is the GradScaler's business (it skips and lowers the scale itself).
            bad = bad | ~torch.isfinite(torch.as_tensor(norm, device=bad.device))
        if acc.num_processes > 1:  # every rank must take the same decision
            bad = acc.reduce(bad.float(), reduction="sum") > 0
        skipped = bool(bad.item())  # the one host-device sync per step (a GradScaler makes the same one)
        if skipped:
            self.state.nonfinite_streak += 1
            self.state.nonfinite_total += 1
        else:
            self.optimizer.step()
            self.state.nonfinite_streak = 0
            if self.state.ema is not None:
                self.state.ema.update(self.unwrapped)
            self.stats.add(task, total_m, l1_m, con_m)
        self.last_lr = self.lr  # the lr this step used (logged), before the schedule moves on
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)  # None, not 0: Adam must not move inactive tasks' parameters
        self.state.step += 1
        return not skipped

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def export_model(self) -> IPT:
        """The model to save: the trained weights, or their EMA with ``--ema-decay``."""
        model = self.unwrapped
        if self.state.ema is None:
            return model
        model = copy.deepcopy(model)
        self.state.ema.copy_to(model)
        return model

    def save_checkpoint(self, run_dir: Path, training: dict[str, Any], keep_last: int | None) -> Path:
        """``checkpoints/step-N/{model,state}`` via a temporary folder renamed when complete (all ranks call this)."""
        acc = self.accelerator
        root = Path(run_dir) / CHECKPOINTS
        final = root / f"step-{self.state.step}"
        tmp = root / f".step-{self.state.step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "state"))  # optimizer, scheduler, model, RNG of every rank
        if acc.is_main_process:
            self.state.save(tmp / "state")
            self.export_model().save_pretrained(tmp / "model", training={**training, "step": self.state.step})
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if keep_last:
                for _, old in list_checkpoints(run_dir)[:-keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, checkpoint: Path) -> None:
        self.accelerator.load_state(str(checkpoint / "state"))
        self.state.load(checkpoint / "state")

    @torch.no_grad()
    def validate(self, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: int) -> dict[str, float]:
        """Mean PSNR (dB, the task's colour space and border crop, 8-bit outputs) per task on held-out patches."""
        from ipt.core.metrics import psnr_batch, quantize

        model = self.unwrapped
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        try:
            for task, (lr_img, hr_img) in pairs.items():
                spec = model.spec(task)
                scores = []
                for i in range(0, len(lr_img), batch):
                    with self.accelerator.autocast():
                        y = model(lr_img[i : i + batch].to(self.device), task)
                    scores.append(psnr_batch(
                        quantize(y.float().cpu()), hr_img[i : i + batch].float(), crop_border=spec.crop_border,
                        y_only=spec.metrics.color_space == "y",
                    ))
                out[task] = float(torch.cat(scores).clamp(max=100.0).mean())
        finally:
            model.train(was_training)
        return out


# -- the run -------------------------------------------------------------------------------------------------------
def _plugin_versions(model: IPT) -> dict[str, Any]:
    import accelerate

    from ipt import __version__

    tasks = {
        n: {"plugin": s.plugin, "distribution": s.distribution, "version": s.version, "scale": s.scale}
        for n, s in ((n, model.spec(n)) for n in model.task_names)
    }
    return {"ipt": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__, "tasks": tasks}


def _check_fresh_run_dir(cfg: TrainConfig) -> None:
    if cfg.resume is None and list_checkpoints(cfg.output_dir):
        raise ValueError(
            f"--output-dir {cfg.output_dir} already holds checkpoints; continue it with --resume "
            "or choose another --output-dir"
        )


def _loader(cfg: TrainConfig, batches: Any, start: int, stop: int) -> Iterable[dict[str, Any]]:
    from torch.utils.data import DataLoader

    if cfg.streaming:
        return DataLoader(batches, batch_size=None, num_workers=cfg.num_workers)
    # Not accelerator.prepare()d: each rank already draws its own crops, and all ranks the same task per step.
    return DataLoader(
        batches, batch_size=None, sampler=range(start, stop), num_workers=cfg.num_workers,
        pin_memory=torch.cuda.is_available(),
    )


def train(cfg: TrainConfig) -> Path:
    """Run training as configured; returns the final model directory ``<output_dir>/model``."""
    from accelerate.utils import set_seed

    from ipt.core import data as data_mod

    run_dir = Path(cfg.output_dir)
    _check_fresh_run_dir(cfg)
    checkpoint = find_checkpoint(cfg.resume, run_dir) if cfg.resume else None
    if checkpoint is not None:
        check_resume_compatible(cfg, checkpoint)

    set_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model, notes = build_model(cfg)

    source = data_mod.load_images(cfg.data, split=cfg.data_split, image_column=cfg.image_column,
                                  streaming=cfg.streaming)
    try:
        num_images: int | None = len(source)  # type: ignore[arg-type]
    except TypeError:
        num_images = None

    acc = make_accelerator(cfg)
    total = cfg.total_steps(num_images, acc.num_processes)
    decay_at = cfg.decay_step(total, num_images, acc.num_processes)
    trainer = Trainer(cfg, model, total, decay_at, accelerator=acc)
    resolved = resolved_config(cfg, total, decay_at)
    training_record = {"config": resolved.model_dump(mode="json")}

    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
        notes.append(f"resumed from {checkpoint} at step {trainer.state.step}")
    start = trainer.state.step

    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (run_dir / CHECKPOINTS).glob(".step-*.tmp"):  # a save interrupted by a kill
            shutil.rmtree(stale, ignore_errors=True)
        (run_dir / "config.yaml").write_text(dump_yaml(resolved))
        (run_dir / "plugins.json").write_text(json.dumps(_plugin_versions(trainer.unwrapped), indent=2) + "\n")
        if checkpoint is not None:
            _truncate_log(run_dir / "log.jsonl", start)  # records past the checkpoint are about to be redone
    if cfg.report_to:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                for k, v in resolved.model_dump(mode="json").items()}
        acc.init_trackers("ipt", config=flat)

    specs = [trainer.unwrapped.spec(t) for t in cfg.tasks]
    schedule = TaskSchedule(cfg.tasks, cfg.seed)
    ga = cfg.grad_accum
    common = dict(batch_size=cfg.batch_size, patch_size=trainer.unwrapped.config.patch_size, seed=cfg.seed,
                  rank=acc.process_index, world_size=acc.num_processes, augment=cfg.augment, steps=total * ga)
    if cfg.streaming:
        batches = data_mod.StreamingTrainBatches(source, specs, MicroBatchSchedule(schedule, ga),
                                                 start_step=start * ga, **common)
    else:
        batches = data_mod.TrainBatches(source, specs, MicroBatchSchedule(schedule, ga), **common)
    val_pairs: dict[str, Any] = {}
    if cfg.val_every and acc.is_main_process:
        try:
            held = data_mod.load_images(cfg.data, split=cfg.data_split, image_column=cfg.image_column,
                                        streaming=cfg.streaming, holdout=True)
            val_pairs = data_mod.validation_pairs(held, specs, patch_size=trainer.unwrapped.config.patch_size,
                                                  n_per_task=cfg.val_patches, seed=1234)
        except ValueError as exc:  # e.g. a dataset without a validation/test split: train anyway
            notes.append(f"validation disabled: {exc}")

    _say(acc, f"{acc.num_processes} process(es) on {acc.device}, mixed precision {acc.mixed_precision}; "
              f"{trainer.unwrapped.num_parameters():,} parameters; tasks {', '.join(cfg.tasks)}; "
              f"{num_images if num_images is not None else 'streamed'} training images; steps {start}->{total}, "
              f"lr {cfg.base_lr:g}" + (f" (x{cfg.lr_decay_gamma:g} after step {decay_at})" if decay_at else ""))
    for note in notes:
        _say(acc, note)

    log_path = run_dir / "log.jsonl"
    trace = None
    if os.environ.get(TRACE_ENV):
        run_dir.mkdir(parents=True, exist_ok=True)
        trace = open(run_dir / f"trace-rank{acc.process_index}.jsonl", "a")  # noqa: SIM115

    def log(record: dict[str, Any]) -> None:
        if acc.is_main_process:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if cfg.report_to:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            for name, value in (record.get("task_loss") or {}).items():
                scalars[f"loss/{name}"] = value
            for name, value in (record.get("psnr") or {}).items():
                scalars[f"val_psnr/{name}"] = value
            acc.log(scalars, step=record["step"])

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, disable=not (acc.is_main_process and cfg.progress),
               dynamic_ncols=True, desc="train", unit="step")
    window_start, window_steps = time.perf_counter(), 0
    patches_per_step = cfg.batch_size * ga * acc.num_processes
    skipped_window = 0
    pending: list[dict[str, Any]] = []
    saved_at = start if checkpoint is not None else -1
    try:
        for batch in _loader(cfg, batches, start * ga, total * ga):
            pending.append(batch)
            if len(pending) < ga:
                continue
            step = trainer.state.step
            expected = schedule.task_at(step)
            if batch["task"] != expected:
                raise RuntimeError(
                    f"step {step}: data pipeline gave task {batch['task']!r}, schedule says {expected!r}"
                )
            if trace is not None:
                trace.write(json.dumps({"step": step, "task": batch["task"],
                                        "checksum": float(batch["hr"].double().sum())}) + "\n")
            ok = trainer.step(pending)
            pending = []
            window_steps += 1
            bar.update(1)
            if not ok:
                skipped_window += 1
                _say(acc, f"step {step}: non-finite loss or gradient ({batch['task']}); step skipped "
                          f"({trainer.state.nonfinite_streak} in a row)")
                if trainer.state.nonfinite_streak >= cfg.max_nonfinite:
                    ck = trainer.save_checkpoint(run_dir, training_record, cfg.keep_last)
                    raise TrainingStopped(
                        f"stopped at step {trainer.state.step}: {trainer.state.nonfinite_streak} non-finite losses "
                        f"in a row (limit --max-nonfinite {cfg.max_nonfinite}); checkpoint saved to {ck}; "
                        "lower --lr, check the data, or use --mixed-precision bf16/no, then --resume"
                    )
            done = trainer.state.step
            if done % cfg.log_every == 0 or done == total:
                elapsed = time.perf_counter() - window_start
                record = {"step": done, "task": batch["task"], **trainer.stats.read(), "lr": trainer.last_lr,
                          "patches_per_s": window_steps * patches_per_step / max(elapsed, 1e-9),
                          "skipped": skipped_window, "nonfinite_total": trainer.state.nonfinite_total}
                log(record)
                if "loss" in record:
                    bar.set_postfix(task=record["task"], loss=f"{record['loss']:.3f}", lr=f"{trainer.lr:.2e}",
                                    pps=f"{record['patches_per_s']:.1f}")
                trainer.stats = StepStats()
                window_start, window_steps, skipped_window = time.perf_counter(), 0, 0
            if cfg.val_every and (done % cfg.val_every == 0 or done == total):
                if acc.is_main_process and val_pairs:
                    psnr = trainer.validate(val_pairs, cfg.batch_size)
                    log({"step": done, "validation": True, "psnr": psnr})
                    _say(acc, f"step {done}: validation PSNR " + ", ".join(f"{t} {v:.2f} dB" for t, v in psnr.items()))
                window_start = time.perf_counter()  # validation time is not training throughput
            if done % cfg.save_every == 0 and done != total:
                trainer.save_checkpoint(run_dir, training_record, cfg.keep_last)
                saved_at = done
            if done >= total:
                break
    finally:
        bar.close()
        if trace is not None:
            trace.close()

    if saved_at != trainer.state.step:
        trainer.save_checkpoint(run_dir, training_record, cfg.keep_last)
    final = run_dir / "model"
    if acc.is_main_process:
        trainer.export_model().save_pretrained(final, training={**training_record, "step": trainer.state.step})
    acc.wait_for_everyone()
    _say(acc, f"done: {trainer.state.step} steps; final model saved to {final}")
    if cfg.report_to:
        acc.end_training()
    return final


# -- command line --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ipt train`` (one per :class:`TrainConfig` field, plus ``--config``)."""
    parser.description = (
        "Pre-train IPT on several tasks, or fine-tune it (--init-from). Runs on one or many processes: "
        "accelerate launch core/train.py --tasks sr2,derain"
    )
    add_model_arguments(parser, TrainConfig)


def run(args: argparse.Namespace) -> int:
    cfg = parse_config(TrainConfig, args)
    try:
        train(cfg)
    except TrainingStopped as exc:
        print(f"ipt train: error: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    from ipt.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))

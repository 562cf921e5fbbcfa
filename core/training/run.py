"""Multi-task pre-training and fine-tuning of IPT on HuggingFace Accelerate.

Runs the same way as ``ipt train ...``, ``python core/train.py ...`` and ``accelerate launch core/train.py ...``
(any number of processes, CPU or GPU). Every option is a field of :class:`~ipt.core.train_config.TrainConfig`.

One optimizer step = one task (``TaskSchedule``, a pure function of seed and step, so every rank trains the same
task) on a batch degraded on the fly by that task's plugin; loss = L1 + lambda x contrastive (``ipt.core.training.losses``).
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

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from ipt.core.checkpoints.pretrained import read_config
from ipt.core.commands.options import dump_yaml
from ipt.core.data.training_data import TrainingData
from ipt.core.data.schedule import MicroBatchSchedule, TaskSchedule
from ipt.core.model import IPT
from ipt.core.training.checkpoints import (
    CHECKPOINTS,
    check_resume_compatible,
    find_checkpoint,
    list_checkpoints,
    truncate_log,
)
from ipt.core.training.config import TrainConfig
from ipt.core.training.trainer import StepStats, Trainer, TrainingStopped, make_accelerator

TRACE_ENV = "IPT_TRAIN_TRACE"  # set to 1: each rank writes trace-rank<r>.jsonl (step, task, batch checksum)


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
def init_model(cfg: TrainConfig) -> tuple[IPT, list[str]]:
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

    run_dir = Path(cfg.output_dir)
    _check_fresh_run_dir(cfg)
    checkpoint = find_checkpoint(cfg.resume, run_dir) if cfg.resume else None
    if checkpoint is not None:
        check_resume_compatible(cfg, checkpoint)

    set_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model, notes = init_model(cfg)

    data = TrainingData.open(cfg)  # per task: stored pairs (a detected layout) or clean images
    num_images = data.num_images

    acc = make_accelerator(cfg)
    total = cfg.total_steps(num_images, acc.num_processes)
    decay_at = cfg.decay_step(total, num_images, acc.num_processes)
    trainer = Trainer(cfg, model, total, decay_at, accelerator=acc)
    resolved = resolved_config(cfg, total, decay_at)
    training_record = {"config": resolved.model_dump(mode="json"), "data": data.record()}

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
            truncate_log(run_dir / "log.jsonl", start)  # records past the checkpoint are about to be redone
    if cfg.report_to:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                for k, v in resolved.model_dump(mode="json").items()}
        acc.init_trackers("ipt", config=flat)

    specs = [trainer.unwrapped.spec(t) for t in cfg.tasks]
    schedule = TaskSchedule(cfg.tasks, cfg.seed)
    ga = cfg.grad_accum
    common = dict(batch_size=cfg.batch_size, patch_size=trainer.unwrapped.config.patch_size, seed=cfg.seed,
                  rank=acc.process_index, world_size=acc.num_processes, augment=cfg.augment, steps=total * ga)
    batches = data.batches(specs, MicroBatchSchedule(schedule, ga), start_step=start * ga, **common)
    val_pairs: dict[str, Any] = {}
    if cfg.val_every and acc.is_main_process:
        val_pairs, val_notes = data.validation(specs, trainer.unwrapped.config.patch_size)
        notes += val_notes

    _say(acc, f"{acc.num_processes} process(es) on {acc.device}, mixed precision {acc.mixed_precision}; "
              f"{trainer.unwrapped.num_parameters():,} parameters; tasks {', '.join(cfg.tasks)}; "
              f"data: {data.summary()}; steps {start}->{total}, "
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
                    log({"step": done, "validation": True, "psnr": psnr, "metrics": trainer.val_metrics})
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

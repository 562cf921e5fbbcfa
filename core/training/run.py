"""Multi-task pre-training and fine-tuning of IPT on HuggingFace Accelerate.

Runs the same way as ``ipt train ...``, ``python core/train.py ...`` and ``accelerate launch core/train.py ...``
(any number of processes, CPU or GPU). Every option is a field of :class:`~ipt.core.training.config.TrainConfig`.

One optimizer step = one task (``TaskSchedule``, a pure function of seed and step, so every rank trains the same
task) on a batch degraded on the fly by that task's plugin; loss = L1 + lambda x contrastive
(``ipt.core.training.losses``). Only the active task's head/tail/embedding receive gradients; DDP runs with
``find_unused_parameters=True`` so that it does not wait for the other tasks' parameters (every rank leaves the
*same* ones unused, so the reduction is consistent) and gradients are reset to ``None`` (not zero) so Adam leaves
inactive tasks untouched.

:func:`train` runs four steps: :func:`prepare_run` (resume resolution, accelerator, lock, model, trainer, run
files), :func:`build_data` (training batches and validation patches), :func:`run_loop` (steps, logs, validation,
checkpoints, stop signals) and :func:`finish` (last checkpoint, final model).

Run directory (``--output-dir``)::

    config.yaml            resolved TrainConfig (re-usable with --config)
    plugins.json           versions of the plugins that provide the tasks
    log.jsonl              one JSON object per log step and per validation (lr = the lr each step used)
    validation/            step-N-<task>.png: degraded | restored | target for a few held-out patches
    checkpoints/step-N/    model/ (save_pretrained; EMA weights with --ema-decay) + state/ (accelerator.save_state,
                           train_state.json, ema.safetensors), written to a temporary folder and renamed
    checkpoints/diverged-step-N/   the state at a non-finite-loss stop (for inspection; never resumed by --resume)
    model/                 the final model (EMA weights with --ema-decay)
    .lock, .lock.json      the run's lock and its holder (one run per directory)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipt.core.checkpoints.pretrained import read_config
from ipt.core.commands.options import dump_yaml
from ipt.core.data.training_data import TrainingData
from ipt.core.data.schedule import MicroBatchSchedule, TaskSchedule
from ipt.core.model import IPT
from ipt.core.training.checkpoints import (
    CHECKPOINTS,
    DIVERGED_PREFIX,
    check_lr_not_raised,
    find_checkpoint,
    list_checkpoints,
    remove_stale,
    resolve_resume,
    set_aside_log,
    training_record,
    truncate_log,
)
from ipt.core.training.config import TrainConfig
from ipt.core.training.errors import TrainingError, TrainingInterrupted, TrainingStopped
from ipt.core.training.lock import RunLock
from ipt.core.training.reporting import RunLogger, validation_grid
from ipt.core.training.signals import StopSignals, ignore_stop_signals
from ipt.core.training.trainer import StepStats, Trainer, make_accelerator

TRACE_ENV = "IPT_TRAIN_TRACE"  # set to 1: each rank writes trace-rank<r>.jsonl (step, task, batch checksum)


def resolved_config(cfg: TrainConfig, total: int, decay_at: int | None, mixed_precision: str) -> TrainConfig:
    """``cfg`` with the derived values filled in (lr, step counts, the precision that runs): what ``config.yaml``
    and the checkpoints record."""
    resolved = cfg.model_copy(
        update={"lr": cfg.base_lr, "max_steps": total, "epochs": None, "lr_decay_steps": decay_at or 0,
                "lr_decay_epochs": None, "mixed_precision": mixed_precision}
    )
    inactive = TrainConfig.inactive_options(dict(resolved))  # e.g. crops_per_image once epochs became steps
    return resolved.model_copy(update={name: TrainConfig.default_of(name) for name in inactive})


# -- model ---------------------------------------------------------------------------------------------------------
def init_model(cfg: TrainConfig) -> tuple[IPT, list[str]]:
    """The model to train and notes on what was kept/added (fine-tuning).

    Pre-training: a fresh model of ``preset`` + ``model`` overrides. Fine-tuning (``init_from``): the saved model's
    architecture and body; heads/tails/embeddings of requested tasks the checkpoint has are kept, missing ones are
    created fresh (their embedding copied from ``embed_from`` when given), the others dropped.
    """
    notes: list[str] = []
    if cfg.init_from is None:
        model = IPT(cfg.architecture(), cfg.tasks)
    else:
        model = _finetune_model(cfg, notes)
    if cfg.freeze == "body":
        model.body.requires_grad_(False)
        notes.append(f"body frozen: training {model.num_parameters(trainable_only=True):,} parameters")
    model.body.grad_checkpointing = cfg.grad_checkpointing
    return model, notes


def _finetune_model(cfg: TrainConfig, notes: list[str]) -> IPT:
    saved = read_config(cfg.init_dir)
    if {"preset", "model"} & cfg.model_fields_set and cfg.architecture() != saved.architecture:
        raise ValueError(
            f"--init-from {cfg.init_from}: its architecture differs from --preset {cfg.preset} "
            f"{cfg.model or ''}; leave out --preset/--model when fine-tuning (the checkpoint defines the model)"
        )
    had = [t.name for t in saved.tasks]
    kept = [t for t in cfg.tasks if t in had]
    new = [t for t in cfg.tasks if t not in had]
    if cfg.embed_from is not None:
        if cfg.embed_from not in had:
            raise ValueError(f"--embed-from {cfg.embed_from}: {cfg.init_from} has no such task; it has: "
                             f"{', '.join(had)}")
        if not new:
            raise ValueError(f"--embed-from {cfg.embed_from} has no effect: {cfg.init_from} already has every task "
                             f"of --tasks {','.join(cfg.tasks)}")
    loaded = kept + ([cfg.embed_from] if cfg.embed_from and cfg.embed_from not in kept else [])
    model = IPT.from_pretrained(cfg.init_dir, tasks=loaded)  # dropped tasks need no plugin
    for t in new:
        model.add_task(t, embed_init=cfg.embed_from)
    model.keep_tasks(cfg.tasks)
    # Fresh parts were appended; order the dicts like --tasks so the saved model lists them that way.
    for d in (model.heads, model.tails, model.task_embed):
        for t in cfg.tasks:
            d[t] = d.pop(t)
    notes.append(
        f"fine-tuning from {cfg.init_from}: body kept; "
        + (f"kept {', '.join(kept)}; " if kept else "")
        + (f"new {', '.join(new)} (lr x{cfg.fresh_lr_scale:g} for its fresh parts"
           + (f", embedding from {cfg.embed_from}" if cfg.embed_from else "") + "); " if new else "")
        + (f"dropped {', '.join(t for t in had if t not in cfg.tasks)}" if set(had) - set(cfg.tasks) else "")
    )
    return model


def fresh_parameters(model: IPT, new_tasks: list[str], embed_copied: bool) -> set[str]:
    """Names of the parameters a fine-tuned model got fresh for ``new_tasks``: heads, tails, and the task
    embeddings unless they were copied from a trained task (``--embed-from``)."""
    prefixes = [f"{part}.{t}." for t in new_tasks for part in ("heads", "tails")]
    embeds = set() if embed_copied else {f"task_embed.{t}" for t in new_tasks}
    return {n for n, _ in model.named_parameters() if n in embeds or any(n.startswith(p) for p in prefixes)}


def new_tasks(cfg: TrainConfig) -> list[str]:
    """Tasks of ``cfg`` that ``--init-from`` lacks (none when pre-training)."""
    if cfg.init_from is None:
        return []
    had = {t.name for t in read_config(cfg.init_dir).tasks}
    return [t for t in cfg.tasks if t not in had]


# -- step 1: prepare the run ---------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything the loop needs; built by :func:`prepare_run`."""

    cfg: TrainConfig
    acc: Any
    trainer: Trainer
    run_dir: Path
    total: int
    decay_at: int | None
    start: int
    record: dict[str, Any]
    log: RunLogger
    num_images: int | None
    source: Any = None  # the training images (a datasets Dataset or IterableDataset)
    saved_at: int = -1  # step of this run's newest checkpoint
    good_checkpoint: Path | None = None  # newest checkpoint saved while no non-finite streak was running
    last_save_time: float = field(default_factory=time.monotonic)
    began: float = field(default_factory=time.monotonic)  # start of this process's training (--max-minutes)


def _agree(acc: Any, error: BaseException | None) -> None:
    """Raise on every rank if any rank failed (rank 0's own error where it has one, so rank 0 prints the reason)."""
    failed = error is not None
    if acc.num_processes > 1:
        failed = bool(acc.reduce(torch.tensor([float(failed)], device=acc.device), reduction="sum").item() > 0)
    if error is not None:
        raise error
    if failed:
        raise TrainingError("another process of this run failed (its message is above)")


def _open_source(cfg: TrainConfig) -> tuple[TrainingData, int | None]:
    data = TrainingData.open(cfg)  # per task: stored pairs (a detected layout) or clean images
    return data, data.num_images


def _resume_notes(cfg: TrainConfig, saved: dict[str, Any], acc: Any, start: int, total: int) -> list[str]:
    """Lines saying what changes at the resumed step besides the options (process count, global batch)."""
    notes = []
    procs = saved.get("world_size", acc.num_processes)
    if procs != acc.num_processes:
        notes.append(f"processes {procs} -> {acc.num_processes} from step {start}")
    old_batch = saved["config"].get("batch_size", cfg.batch_size) * saved["config"].get("grad_accum", 1) * procs
    new_batch = cfg.batch_size * cfg.grad_accum * acc.num_processes
    if old_batch != new_batch:
        notes.append(f"global batch {old_batch} -> {new_batch} patches per step from step {start} "
                     "(the lr is not rescaled)")
    if total <= start:
        raise ValueError(f"--resume: the checkpoint is at step {start} and this run ends at step {total}: nothing to "
                         "train; give a larger --max-steps")
    return notes


def prepare_run(cfg: TrainConfig, acc: Any, checkpoint: Path | None, changes: list[str]) -> Run:
    """Model, data size, schedule, trainer (resumed when ``checkpoint``), run files and trackers."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model, notes = init_model(cfg)
    fresh_tasks = training_record(checkpoint).get("fresh_tasks", []) if checkpoint else new_tasks(cfg)
    fresh = fresh_parameters(model, fresh_tasks, cfg.embed_from is not None)
    source, num_images = _open_source(cfg)
    total = cfg.total_steps(num_images, acc.num_processes)
    decay_at = cfg.decay_step(total, num_images, acc.num_processes)
    trainer = Trainer(cfg, model, total, decay_at, accelerator=acc, fresh=fresh)
    start = 0
    if checkpoint is not None:
        saved = training_record(checkpoint)
        trainer.load_checkpoint(checkpoint)
        start = trainer.state.step
        check_lr_not_raised(saved["config"], cfg, start, total, decay_at)
        trainer.apply_config()
        notes += [f"resumed from {checkpoint} at step {start}"] + [f"changed on resume: {c}" for c in changes]
        notes += _resume_notes(cfg, saved, acc, start, total)
    resolved = resolved_config(cfg, total, decay_at, acc.mixed_precision)
    record = {"config": resolved.model_dump(mode="json"), "world_size": acc.num_processes, "fresh_tasks": fresh_tasks,
              "data": source.record()}
    run = Run(cfg, acc, trainer, Path(cfg.output_dir), total, decay_at, start, record,
              RunLogger(acc, Path(cfg.output_dir), bool(cfg.report_to), cfg.progress, total, start), num_images,
              source)
    if checkpoint is not None:
        run.saved_at = start
        run.good_checkpoint = checkpoint if trainer.state.nonfinite_streak == 0 else None
    _write_run_files(run, resolved, checkpoint is not None, notes)
    _say_start(run, notes)
    return run


def _write_run_files(run: Run, resolved: TrainConfig, resumed: bool, notes: list[str]) -> None:
    acc, run_dir = run.acc, run.run_dir
    if acc.is_main_process:
        remove_stale(run_dir)
        (run_dir / "config.yaml").write_text(dump_yaml(resolved))
        (run_dir / "plugins.json").write_text(json.dumps(_plugin_versions(run.trainer.unwrapped), indent=2) + "\n")
        if resumed:
            truncate_log(run_dir / "log.jsonl", run.start)  # records past the checkpoint are about to be redone
        elif (aside := set_aside_log(run_dir / "log.jsonl")) is not None:
            notes.append(f"an earlier run's log.jsonl was moved to {aside.name}")
    if run.cfg.report_to:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                for k, v in resolved.model_dump(mode="json").items()}
        acc.init_trackers("ipt", config=flat)


def _say_start(run: Run, notes: list[str]) -> None:
    acc, cfg, t = run.acc, run.cfg, run.trainer
    lrs = t.lrs
    run.log.say(
        f"{acc.num_processes} process(es) on {acc.device}, mixed precision {acc.mixed_precision}; "
        f"{t.unwrapped.num_parameters():,} parameters; tasks {', '.join(cfg.tasks)}; "
        f"data: {run.source.summary()}; "
        f"steps {run.start}->{run.total}, lr {cfg.base_lr:g}"
        + (f" (x{cfg.lr_decay_gamma:g} after step {run.decay_at})" if run.decay_at else "")
        + (f", now {lrs[0]:g}" if run.start else "")
        + (f"; fresh parts lr {lrs[1]:g} now (x{cfg.fresh_lr_scale:g}, {cfg.fresh_warmup_steps} warm-up steps)"
           if len(lrs) > 1 else "")
    )
    for note in notes:
        run.log.say(note)


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


# -- step 2: data --------------------------------------------------------------------------------------------------
@dataclass
class Data:
    batches: Iterable[dict[str, Any]]
    schedule: TaskSchedule
    val_pairs: dict[str, Any]


def _loader(cfg: TrainConfig, batches: Any, start: int, stop: int) -> Iterable[dict[str, Any]]:
    from torch.utils.data import DataLoader

    init = ignore_stop_signals if cfg.num_workers else None
    if cfg.streaming:
        return DataLoader(batches, batch_size=None, num_workers=cfg.num_workers, worker_init_fn=init)
    # Not accelerator.prepare()d: each rank already draws its own crops, and all ranks the same task per step.
    return DataLoader(
        batches, batch_size=None, sampler=range(start, stop), num_workers=cfg.num_workers,
        pin_memory=torch.cuda.is_available(), worker_init_fn=init,
    )


def build_data(run: Run, source: TrainingData) -> Data:
    """Training batches from ``run.start`` on (deterministic: a pure function of seed, step and rank) and the
    held-out validation patches (main process). ``source`` knows each task's data: stored pairs (a detected
    dataset layout) or clean images degraded on the fly (:class:`~ipt.core.data.training_data.TrainingData`)."""
    cfg, acc, model = run.cfg, run.acc, run.trainer.unwrapped
    specs = [model.spec(t) for t in cfg.tasks]
    schedule = TaskSchedule(cfg.tasks, cfg.seed)
    ga = cfg.grad_accum
    batches = source.batches(specs, MicroBatchSchedule(schedule, ga), start_step=run.start * ga,
                             batch_size=cfg.batch_size, patch_size=model.config.patch_size, seed=cfg.seed,
                             rank=acc.process_index, world_size=acc.num_processes, augment=cfg.augment,
                             steps=run.total * ga)
    val_pairs: dict[str, Any] = {}
    if cfg.val_every and acc.is_main_process:
        val_pairs, val_notes = source.validation(specs, model.config.patch_size)
        for note in val_notes:
            run.log.say(note)
    return Data(batches, schedule, val_pairs)


# -- step 3: the loop ----------------------------------------------------------------------------------------------
@dataclass
class Window:
    """Throughput and skipped steps between two log records."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0
    skipped: int = 0


def run_loop(run: Run, data: Data) -> None:
    """Train from ``run.start`` to ``run.total``; ends early (raising) on a stop signal or non-finite losses."""
    cfg, ga = run.cfg, run.cfg.grad_accum
    trace = _open_trace(run)
    window, pending = Window(), []
    try:
        with StopSignals() as signals:
            for batch in _loader(cfg, data.batches, run.start * ga, run.total * ga):
                pending.append(batch)
                if len(pending) < ga:
                    continue
                _one_step(run, data, pending, trace, window)
                pending = []
                out_of_time = _checkpoint_or_stop(run, signals)
                if run.trainer.state.step >= run.total:
                    break
                if out_of_time:
                    run.log.say(f"step {run.trainer.state.step}: --max-minutes {cfg.max_minutes:g} reached; "
                                f"finishing as at --max-steps")
                    break
    finally:
        run.log.close()
        if trace is not None:
            trace.close()


def _open_trace(run: Run) -> Any:
    if not os.environ.get(TRACE_ENV):
        return None
    run.run_dir.mkdir(parents=True, exist_ok=True)
    return open(run.run_dir / f"trace-rank{run.acc.process_index}.jsonl", "a")


def _one_step(run: Run, data: Data, micro: list[dict[str, Any]], trace: Any, window: Window) -> None:
    trainer, batch = run.trainer, micro[0]
    step = trainer.state.step
    expected = data.schedule.task_at(step)
    if batch["task"] != expected:
        raise RuntimeError(f"step {step}: data pipeline gave task {batch['task']!r}, schedule says {expected!r}")
    if trace is not None:
        trace.write(json.dumps({"step": step, "task": batch["task"],
                                "checksum": float(batch["hr"].double().sum())}) + "\n")
    ok = trainer.step(micro)
    window.steps += 1
    run.log.bar.update(1)
    if not ok:
        window.skipped += 1
        _on_nonfinite(run, batch["task"])
    done = trainer.state.step
    if done % run.cfg.log_every == 0 or done == run.total:
        _log_window(run, batch["task"], window)
    if run.cfg.val_every and (done % run.cfg.val_every == 0 or done == run.total):
        _validate(run, data, done)
        window.start = time.perf_counter()  # validation time is not training throughput


def _on_nonfinite(run: Run, task: str) -> None:
    state, limit = run.trainer.state, run.cfg.max_nonfinite
    run.log.say(f"step {state.step - 1}: non-finite loss or gradient ({task}); step skipped "
                f"({state.nonfinite_streak} in a row, {state.task_streak[task]} in a row on {task})")
    if state.nonfinite_streak < limit and state.task_streak[task] < limit:
        return
    what = (f"{state.nonfinite_streak} non-finite losses in a row (the last on task {task})"
            if state.nonfinite_streak >= limit
            else f"task {task}: {state.task_streak[task]} non-finite losses in a row on its steps")
    ck = run.trainer.save_checkpoint(run.run_dir, run.record, None, name=f"{DIVERGED_PREFIX}step-{state.step}")
    good = (f"resume from the last checkpoint saved before it: --resume {run.good_checkpoint}"
            if run.good_checkpoint is not None else "no checkpoint was saved before it: start again without --resume")
    raise TrainingStopped(
        f"stopped at step {state.step}: {what} (limit --max-nonfinite {limit}); {good}, with a lower --lr, "
        f"checked data or --mixed-precision bf16/no (the diverged state is kept in {ck}, which --resume skips)"
    )


def _log_window(run: Run, task: str, window: Window) -> None:
    trainer = run.trainer
    elapsed = time.perf_counter() - window.start
    patches_per_step = run.cfg.batch_size * run.cfg.grad_accum * run.acc.num_processes
    record = {"step": trainer.state.step, "task": task, **trainer.stats.read(), "lr": trainer.last_lrs[0],
              "patches_per_s": window.steps * patches_per_step / max(elapsed, 1e-9),
              "skipped": window.skipped, "nonfinite_total": trainer.state.nonfinite_total}
    if len(trainer.last_lrs) > 1:
        record["lr_fresh"] = trainer.last_lrs[1]
    run.log.record(record)
    if "loss" in record:
        run.log.bar.set_postfix(task=task, loss=f"{record['loss']:.3f}", lr=f"{trainer.lr:.2e}",
                                pps=f"{record['patches_per_s']:.1f}")
    trainer.stats = StepStats()
    window.start, window.steps, window.skipped = time.perf_counter(), 0, 0


def _validate(run: Run, data: Data, step: int) -> None:
    if not (run.acc.is_main_process and data.val_pairs):
        return
    psnr, restored = run.trainer.validate(data.val_pairs, run.cfg.batch_size)
    run.log.record({"step": step, "validation": True, "psnr": psnr, "metrics": run.trainer.val_metrics})
    grids = {t: validation_grid(data.val_pairs[t][0], restored[t], data.val_pairs[t][1][: len(restored[t])])
             for t in restored}
    run.log.validation_images(step, grids)
    run.log.say(f"step {step}: validation PSNR " + ", ".join(f"{t} {v:.2f} dB" for t, v in psnr.items()))


def _agreed_flags(run: Run, *flags: bool) -> list[bool]:
    """``flags`` OR-ed over all ranks (one all-reduce per step with several processes)."""
    if run.acc.num_processes == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=run.acc.device)
    return [bool(v > 0) for v in run.acc.reduce(t, reduction="sum").tolist()]


def _save(run: Run) -> Path:
    ck = run.trainer.save_checkpoint(run.run_dir, run.record, run.cfg.keep_last)
    run.saved_at, run.last_save_time = run.trainer.state.step, time.monotonic()
    if run.trainer.state.nonfinite_streak == 0:
        run.good_checkpoint = ck
    return ck


def _checkpoint_or_stop(run: Run, signals: StopSignals) -> bool:
    """Save every ``--save-every`` steps or ``--save-every-minutes`` (the main process's clock decides for all)
    and, when a stop signal arrived on any rank, save and raise :class:`TrainingInterrupted`.

    Returns True when ``--max-minutes`` of training have passed (again the main process's clock, for all ranks).
    """
    done, cfg = run.trainer.state.step, run.cfg
    now = time.monotonic()
    due = bool(cfg.save_every_minutes) and run.acc.is_main_process and (
        now - run.last_save_time >= 60 * cfg.save_every_minutes)
    late = bool(cfg.max_minutes) and run.acc.is_main_process and now - run.began >= 60 * cfg.max_minutes
    stop, due, late = _agreed_flags(run, signals.received is not None, due, late)
    if (done % cfg.save_every == 0 or due or stop) and done != run.total and run.saved_at != done:
        ck = _save(run)
        if due and not stop:
            run.log.say(f"step {done}: checkpoint saved to {ck} ({cfg.save_every_minutes:g} minutes since the last)")
    if stop and done < run.total:
        signum = signals.received or 15  # a rank that saw no signal itself follows the others (as SIGTERM)
        raise TrainingInterrupted(signum, done, run.run_dir / CHECKPOINTS / f"step-{run.saved_at}")
    return late


# -- step 4: finish ------------------------------------------------------------------------------------------------
def finish(run: Run) -> Path:
    """Last checkpoint, the final model ``<run>/model``, and a word on tasks whose steps were skipped."""
    trainer, acc = run.trainer, run.acc
    if run.saved_at != trainer.state.step:
        _save(run)
    final = run.run_dir / "model"
    if acc.is_main_process:
        trainer.export_model().save_pretrained(final, training={**run.record, "step": trainer.state.step})
    acc.wait_for_everyone()
    for task, n in sorted(trainer.state.task_skipped.items()):
        run.log.say(f"warning: task {task}: {n} step(s) skipped for non-finite losses (see log.jsonl 'skipped')")
    run.log.say(f"done: {trainer.state.step} steps; final model saved to {final}")
    return final


def train(cfg: TrainConfig) -> Path:
    """Run training as configured; returns the final model directory ``<output_dir>/model``.

    Raises :class:`~ipt.core.training.errors.TrainingInterrupted` after a stop signal (a checkpoint was saved),
    :class:`~ipt.core.training.errors.TrainingStopped` on non-finite losses, ValueError for options that cannot
    run (one line), :class:`~ipt.core.training.lock.RunDirInUse` when another run holds ``--output-dir``.
    """
    checkpoint, changes = None, []
    if cfg.resume:
        checkpoint = find_checkpoint(cfg.resume, Path(cfg.output_dir))
        cfg, changes = resolve_resume(cfg, checkpoint)
    acc = make_accelerator(cfg)
    lock = RunLock(Path(cfg.output_dir)) if acc.is_main_process else None
    error = None
    try:
        if lock is not None:
            lock.acquire()
        _check_fresh_run_dir(cfg)
    except (ValueError, OSError) as exc:
        error = exc
    try:
        _agree(acc, error)
        run = prepare_run(cfg, acc, checkpoint, changes)
        run_loop(run, build_data(run, run.source))
        return finish(run)
    finally:
        if cfg.report_to:
            acc.end_training()  # flush the trackers, also after a stop signal or an error
        if lock is not None:
            lock.release()

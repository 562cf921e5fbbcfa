"""Training state you can trust (issue 18): stop signals, the run lock, checkpoint writes that survive kills and a
full disk, honest resume, divergence, no silent options. Reproductions of shared/reviews/reliability.md rows 3-8,
36-42, 46 and shared/cases/08, 23 are named in the test docstrings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from launch_helpers import free_port
from safetensors.torch import load_file

from ipt.core.training.checkpoints import list_checkpoints
from ipt.core.training.config import TrainConfig
from ipt.core.training.errors import (
    CheckpointWriteError,
    TrainingInterrupted,
    TrainingStopped,
)
from ipt.core.training.lock import RunDirInUse, RunLock
from ipt.core.training.run import train
from ipt.core.training.trainer import check_cpu_processes

from ipt.cli import main as ipt_main

REPO = Path(__file__).resolve().parents[1]
FAST: dict[str, Any] = {
    "preset": "tiny", "model": {"num_enc_layers": 1, "num_dec_layers": 1}, "batch_size": 2, "val_every": 0,
    "log_every": 1, "progress": False, "save_every": 1000, "save_every_minutes": 0,
}
FAST_FLAGS = ["--preset", "tiny", "--model", "num_enc_layers=1,num_dec_layers=1", "--batch-size", "2",
              "--no-progress", "--log-every", "1", "--val-every", "0", "--save-every-minutes", "0"]


def cfg(out: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(**{**FAST, "output_dir": out, **kw})


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def steps_logged(run: Path) -> list[int]:
    return [r["step"] for r in records(run) if not r.get("validation")]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = ipt_main(["train", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def signal_when_logged(run: Path, signum: int, min_records: int = 1) -> threading.Thread:
    """Send ``signum`` to this process once ``run/log.jsonl`` has ``min_records`` records (from another thread;
    Python runs the handler in the main thread, between two bytecodes of the training loop)."""

    def wait_and_send() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = run / "log.jsonl"
            if log.is_file() and len(log.read_text().splitlines()) >= min_records:
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.01)

    t = threading.Thread(target=wait_and_send, daemon=True)
    t.start()
    return t


# -- 1. stop signals (row 4, row 5) -----------------------------------------------------------------------------------
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGUSR1, 138)])
def test_stop_signal_saves_checkpoint_and_exits(signum: int, code: int, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Row 4: SIGTERM lost all steps since the last save and printed nothing (rc -15)."""
    run = tmp_path / "run"
    signal_when_logged(run, signum)
    rc, err = cli(["--tasks", "sr2,derain", "--max-steps", "200", "--output-dir", str(run), *FAST_FLAGS], capsys)
    assert rc == code, err
    (step, ck), = list_checkpoints(run)
    assert 1 <= step < 200 and f"stopped by {signal.Signals(signum).name} at step {step}" in err
    assert str(ck) in err and "--resume" in err
    assert steps_logged(run)[-1] == step and not (run / "model").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the run


def test_resume_after_sigterm_is_bit_identical(tmp_path: Path) -> None:
    common = dict(tasks=["sr2", "derain"], lr=1e-3, ema_decay=0.9)
    straight = train(cfg(tmp_path / "a", max_steps=8, **common))
    signal_when_logged(tmp_path / "b", signal.SIGTERM, min_records=2)
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg(tmp_path / "b", max_steps=8, **common))
    assert info.value.exit_code == 143 and 2 <= info.value.step < 8
    resumed = train(cfg(tmp_path / "b", max_steps=8, resume="latest", **common))
    assert_same_weights(straight, resumed)
    assert steps_logged(tmp_path / "b") == list(range(1, 9))


def _launch(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    # Each launch its own rendezvous port: this test runs two launches at once (launch_helpers.free_port).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", "core/train.py", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("IPT_DEBUG", None)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, **kw)


@pytest.mark.slow
def test_sigterm_two_processes_then_resume_is_bit_identical(tmp_path: Path) -> None:
    """SIGTERM to `accelerate launch` (torchrun forwards it to both ranks): both agree at one step boundary, save,
    exit; a second launch without --resume gets one line from rank 0; --resume ends bit-identical."""
    args = ["--tasks", "sr2,derain", *FAST_FLAGS, "--max-steps", "40", "--seed", "3", "--lr", "1e-3"]
    straight = _launch([*args, "--output-dir", str(tmp_path / "a")])
    run = tmp_path / "b"
    stopped = _launch([*args, "--output-dir", str(run)])
    deadline = time.monotonic() + 300
    while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().strip()):
        assert stopped.poll() is None and time.monotonic() < deadline, stopped.communicate()[1][-3000:]
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=300)
    assert stopped.returncode != 0
    (step, ck), = list_checkpoints(run)
    assert step < 40 and err.count(f"ipt train: stopped by SIGTERM at step {step}") == 1, err[-3000:]
    assert (ck / "state" / "random_states_1.pkl").is_file()

    again = _launch([*args, "--output-dir", str(run)])
    _, err = again.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert again.returncode != 0 and sum(ln.startswith("ipt train: error:") for ln in lines) == 1, err[-3000:]
    # the launcher's closing summary ends with rank 0's line (torchrun's error file), not a bare traceback hint
    assert "traceback : ipt train: error: " in lines[-2] and "already holds checkpoints" in lines[-2]

    resumed = _launch([*args, "--output-dir", str(run), "--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert straight.wait(timeout=300) == 0
    assert_same_weights(tmp_path / "a" / "model", run / "model")


# -- time-based checkpoints -----------------------------------------------------------------------------------------
def test_time_based_checkpoints_keep_resume_bit_identical(tmp_path: Path) -> None:
    common = dict(tasks=["sr2", "denoise30"], lr=1e-3, max_steps=4, keep_last=10)
    straight = train(cfg(tmp_path / "a", **common))
    timed = train(cfg(tmp_path / "b", save_every_minutes=1e-6, **common))  # a checkpoint after every step
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [1, 2, 3, 4]
    assert_same_weights(straight, timed)
    resumed = train(cfg(tmp_path / "b", resume=str(tmp_path / "b/checkpoints/step-2"), **common))
    assert_same_weights(straight, resumed)


def test_save_every_minutes_is_on_by_default() -> None:
    assert TrainConfig(tasks=["sr2"]).save_every_minutes == 10


# -- 2. one run per run directory (rows 6, 42) ----------------------------------------------------------------------
def test_second_run_on_same_output_dir_is_refused_with_holder_pid(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Row 42: two runs on one --output-dir interleaved their checkpoints and logs."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from ipt.core.training.lock import RunLock;"
         f"lock = RunLock(Path({str(run)!r})).acquire(); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, err = cli(["--tasks", "sr2", "--max-steps", "1", "--output-dir", str(run), *FAST_FLAGS], capsys)
        assert rc == 2 and f"is in use by another training run (PID {holder.pid} on" in err
        assert not (run / "log.jsonl").exists() and not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    train(cfg(run, tasks=["sr2"], max_steps=1))  # the kernel released the dead holder's lock
    with RunLock(run), pytest.raises(RunDirInUse, match=f"PID {os.getpid()}"):
        RunLock(run).acquire()


def test_fresh_start_sets_an_earlier_log_aside(tmp_path: Path) -> None:
    """Row 6: a restart without --resume after a crash before the first checkpoint mixed both runs' records."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6)))
    train(cfg(run, tasks=["sr2"], max_steps=3))
    assert steps_logged(run) == [1, 2, 3]
    (aside,) = run.glob("log-before-*.jsonl")
    assert [json.loads(x)["step"] for x in aside.read_text().splitlines()] == [2, 4, 6]


# -- 3. checkpoint writes (rows 3, 7, 8, 46) --------------------------------------------------------------------------
KILL_DURING_RESAVE = """
import os, shutil, signal, sys
from pathlib import Path
from ipt.core.training.config import TrainConfig
from ipt.core.training.run import train
real = shutil.rmtree
def rmtree(path, *a, **k):
    if ".old-" in str(path) and Path(path).exists():  # deleting the replaced step-N: remove one file, then die like a SIGKILL would
        next(p for p in Path(path).rglob("*.safetensors")).unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, *a, **k)
shutil.rmtree = rmtree
train(TrainConfig(**{**__FAST__, "tasks": ["sr2"], "max_steps": 2, "save_every": 1, "keep_last": 5,
                     "output_dir": Path(sys.argv[1]), "resume": sys.argv[2]}))
"""


def test_kill_while_resave_replaces_a_checkpoint_never_exposes_a_partial_one(tmp_path: Path) -> None:
    """Row 3: a re-save deleted the old step-N in place; a kill mid-delete left a step-N that --resume picked."""
    run = tmp_path / "run"
    train(cfg(run, tasks=["sr2"], max_steps=2, save_every=1, keep_last=5))
    script = KILL_DURING_RESAVE.replace("__FAST__", repr(FAST))
    proc = subprocess.run([sys.executable, "-c", script, str(run), str(run / "checkpoints/step-1")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list((run / "checkpoints").glob(".step-2.old-*"))  # the old copy, aside, half deleted
    for _, ck in list_checkpoints(run):  # every visible checkpoint is complete
        assert (ck / "model" / "model.safetensors").is_file() and (ck / "state" / "model.safetensors").is_file()
    train(cfg(run, tasks=["sr2"], max_steps=3, save_every=1, keep_last=5, resume="latest"))
    assert not list((run / "checkpoints").glob(".*"))  # stale copies removed at start


def test_full_disk_gives_one_line_and_leaves_no_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Row 8 (simulated): torch's zip writer reports a full disk as 'unexpected pos'; the partial folder stayed."""
    import accelerate
    from ipt.core.training import checkpoints

    def full(self: Any, output_dir: str, **kw: Any) -> None:
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "optimizer.bin").write_bytes(b"x" * 3_000_000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8083904 vs 8083792")

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: SimpleNamespace(free=1000, total=1, used=1))
    run = tmp_path / "run"
    rc, err = cli(["--tasks", "sr2", "--max-steps", "2", "--output-dir", str(run), *FAST_FLAGS], capsys)
    assert rc == 1 and err.startswith(f"ipt train: error: cannot write checkpoint to {run / 'checkpoints/step-2'}: "
                                      "no space left on device; about 3 MB needed")
    assert not list((run / "checkpoints").iterdir())


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_real_full_disk_keeps_earlier_checkpoints_and_names_the_size(tmp_path: Path) -> None:
    """Row 7/8 on a real full filesystem (a small tmpfs; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "16m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint to .*: no space left.* MB needed"):
            train(cfg(disk / "run", tasks=["sr2"], max_steps=6, save_every=1, keep_last=None))
        saved = list_checkpoints(disk / "run")
        assert saved and all((ck / "model" / "model.safetensors").is_file() for _, ck in saved)
        assert not list((disk / "run" / "checkpoints").glob(".*"))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_saved_models_and_checkpoints_follow_the_umask(tmp_path: Path) -> None:
    """Row 46: model folders were 0700 and model.safetensors 0600, unreadable by another user."""
    old = os.umask(0o022)
    try:
        final = train(cfg(tmp_path / "run", tasks=["sr2"], max_steps=1))
    finally:
        os.umask(old)
    ck = tmp_path / "run" / "checkpoints" / "step-1"
    for d in (final, ck, ck / "model", ck / "state"):
        assert d.stat().st_mode & 0o777 == 0o755, d
    for f in [final / "model.safetensors", *ck.rglob("*.*")]:
        if f.is_file():
            assert f.stat().st_mode & 0o777 == 0o644, f


# -- 4. resume says what it does (row 40, case 08) -------------------------------------------------------------------
def test_resume_with_new_lr_uses_it_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row 40: banner and config.yaml said 1e-06 while the optimizer kept 1e-04."""
    run = tmp_path / "run"
    rc, _ = cli(["--tasks", "sr2", "--lr", "1e-4", "--max-steps", "4", "--output-dir", str(run), *FAST_FLAGS], capsys)
    assert rc == 0
    rc = ipt_main(["train", "--tasks", "sr2", "--lr", "1e-6", "--max-steps", "6", "--output-dir", str(run), "--resume",
                   "--weight-decay", "0.01", *FAST_FLAGS])
    err = capsys.readouterr().err
    assert rc == 0 and "changed on resume: --lr 0.0001 -> 1e-06" in err and "--weight-decay 0.0 -> 0.01" in err
    lrs = [r["lr"] for r in records(run)]
    # decay kept where the first run put it (index 3 = round(2/3 of 4)), the new lr from the resumed step on
    assert lrs == pytest.approx([1e-4] * 3 + [4e-5] + [1e-6 * 0.4] * 2)
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == 1e-6
    groups = torch.load(run / "checkpoints/step-6/state/optimizer.bin", weights_only=True)["param_groups"]
    assert groups[0]["weight_decay"] == 0.01 and groups[0]["initial_lr"] == 1e-6


def test_resume_without_flags_keeps_the_checkpoints_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    """Another instance of row 40: --lr 1e-3 then a plain --resume reported the default 5e-05."""
    run = tmp_path / "run"
    assert cli(["--tasks", "sr2", "--lr", "1e-3", "--max-steps", "2", "--lr-decay-steps", "0", "--grad-clip", "0.5",
                "--output-dir", str(run), *FAST_FLAGS], capsys)[0] == 0
    rc, _ = cli(["--tasks", "sr2", "--output-dir", str(run), "--resume", "--max-steps", "3", *FAST_FLAGS], capsys)
    assert rc == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["lr"] == 1e-3 and resolved["grad_clip"] == 0.5 and resolved["max_steps"] == 3
    assert [r["lr"] for r in records(run)] == pytest.approx([1e-3] * 3)


def test_longer_max_steps_on_resume_never_raises_a_decayed_lr(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    """Case 08: 12 steps (decay at 8) then --max-steps 24 --resume went 5e-5 -> 2e-5 -> back to 5e-5."""
    run = tmp_path / "run"
    assert cli(["--tasks", "sr2", "--max-steps", "12", "--output-dir", str(run), *FAST_FLAGS], capsys)[0] == 0
    assert cli(["--tasks", "sr2", "--max-steps", "24", "--output-dir", str(run), "--resume", *FAST_FLAGS],
               capsys)[0] == 0
    lrs = [r["lr"] for r in records(run)]
    assert lrs == pytest.approx([5e-5] * 8 + [2e-5] * 16)
    # an explicit later decay step would raise the lr back up: refused in one line, nothing trained
    rc, err = cli(["--tasks", "sr2", "--max-steps", "30", "--lr-decay-steps", "26", "--output-dir", str(run),
                   "--resume", *FAST_FLAGS], capsys)
    assert rc == 2 and "already decayed at step 8" in err and "raise it back to 5e-05" in err
    assert steps_logged(run)[-1] == 24
    # ... as is a run that has nothing left to do
    rc, err = cli(["--tasks", "sr2", "--output-dir", str(run), "--resume", *FAST_FLAGS], capsys)
    assert rc == 2 and "nothing to train" in err


def test_resume_refuses_options_that_cannot_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert cli(["--tasks", "sr2", "--max-steps", "1", "--output-dir", str(run), *FAST_FLAGS], capsys)[0] == 0
    rc, err = cli(["--tasks", "sr2", "--max-steps", "2", "--output-dir", str(run), "--resume", "--preset", "small",
                   *FAST_FLAGS[2:]], capsys)
    assert rc == 2 and "trained with preset='tiny'" in err
    rc, err = cli(["--tasks", "sr2", "--max-steps", "2", "--output-dir", str(run), "--resume", "--ema-decay", "0.9",
                   *FAST_FLAGS], capsys)
    assert rc == 2 and "ema_decay=None" in err


def test_resume_reports_changed_batch_and_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert cli(["--tasks", "sr2", "--max-steps", "1", "--output-dir", str(run), *FAST_FLAGS], capsys)[0] == 0
    rc = ipt_main(["train", "--tasks", "sr2", "--max-steps", "2", "--output-dir", str(run), "--resume",
                   *FAST_FLAGS, "--batch-size", "3", "--seed", "5"])
    err = capsys.readouterr().err
    assert rc == 0 and "changed on resume: --batch-size 2 -> 3" in err and "--seed 0 -> 5" in err
    assert "global batch 2 -> 3 patches per step from step 1" in err


# -- 5. divergence (rows 36, 39) --------------------------------------------------------------------------------------
def test_divergence_names_the_last_good_checkpoint_and_resume_recovers(tmp_path: Path) -> None:
    """Row 39: the stop checkpoint held the diverged weights and was the one advised for --resume."""
    run = tmp_path / "run"
    train(cfg(run, tasks=["denoise30"], max_steps=4, save_every=2, lr=1e-4))
    with pytest.raises(TrainingStopped) as info:
        train(cfg(run, tasks=["denoise30"], max_steps=20, lr=1e30, max_nonfinite=2, resume="latest"))
    msg = str(info.value)
    assert f"--resume {run / 'checkpoints' / 'step-4'}" in msg and "diverged-step-" in msg
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]  # the diverged state is not offered to --resume
    train(cfg(run, tasks=["denoise30"], max_steps=6, lr=1e-4, resume="latest"))
    assert all(torch.isfinite(v).all() for v in weights(run / "model").values())


@pytest.fixture
def nan_task(monkeypatch: pytest.MonkeyPatch) -> str:
    """The built-in tasks plus 'nanalways', whose degradation is NaN everywhere."""
    from ipt.plugins import sr
    from ipt.registry import TaskSpec, hookimpl, manager

    spec = TaskSpec(name="nanalways", description="NaN input", degrade=lambda clean, g: clean * float("nan"))
    plugin = SimpleNamespace(ipt_register_tasks=hookimpl(lambda: [spec]))
    registry = manager.TaskRegistry(plugins=[("sr", sr, "ipt-framework", "0"), ("nan", plugin, "nan-dist", "1")])
    monkeypatch.setattr(manager, "_REGISTRY", registry)
    return "nanalways"


def test_a_task_nan_on_every_step_stops_the_run_between_healthy_steps(nan_task: str, tmp_path: Path) -> None:
    """Row 36: the streak reset on every sr2 step, so the run ended 'done' with the NaN task never trained."""
    with pytest.raises(TrainingStopped, match=r"nanalways"):
        train(cfg(tmp_path, tasks=["sr2", nan_task], max_steps=40, max_nonfinite=3))
    state = json.loads(next((tmp_path / "checkpoints").glob("diverged-*/state/train_state.json")).read_text())
    assert state["task_streak"]["nanalways"] == 3 and state["task_streak"]["sr2"] == 0


def test_per_task_streak_survives_healthy_steps_of_other_tasks() -> None:
    from ipt.core.training.trainer import TrainState

    state = TrainState()
    for _ in range(4):  # alternating: the overall streak never passes 1, the NaN task's reaches 4
        state.record("sr2", True)
        state.record("nanalways", False)
    assert state.nonfinite_streak == 1 and state.task_streak == {"sr2": 0, "nanalways": 4}
    assert state.task_skipped == {"nanalways": 4} and state.nonfinite_total == 4


def test_skipped_steps_of_a_task_are_reported_at_the_end(nan_task: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    train(cfg(tmp_path, tasks=["sr2", nan_task], max_steps=10, max_nonfinite=20))
    skipped = sum(r["skipped"] for r in records(tmp_path))
    assert skipped > 0 and f"warning: task nanalways: {skipped} step(s) skipped" in capsys.readouterr().err


# -- 6. no silent options (case 23) -----------------------------------------------------------------------------------
def test_fp16_on_cpu_is_refused(tmp_path: Path) -> None:
    """Case 23: --mixed-precision fp16 on the CPU trained in fp32 while config.yaml and the banner said fp16.
    (Subprocesses: Accelerate keeps one precision per process.)"""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = ["--tasks", "sr2", "--max-steps", "1", "--output-dir", str(tmp_path / "run"), *FAST_FLAGS]
    env = {k: v for k, v in os.environ.items() if k != "IPT_DEBUG"}
    cmd = [sys.executable, "-m", "ipt.cli", "train", *out]
    proc = subprocess.run([*cmd, "--mixed-precision", "fp16"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "--mixed-precision fp16 needs a CUDA GPU" in proc.stderr and "bf16" in proc.stderr
    # what `accelerate launch --mixed_precision fp16` sets
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "ACCELERATE_MIXED_PRECISION": "fp16"},
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "mixed precision fp16 (from accelerate config/launch) needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_config_records_the_precision_that_ran(tmp_path: Path) -> None:
    train(cfg(tmp_path, tasks=["sr2"], max_steps=1))
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["mixed_precision"] == "no"


@pytest.mark.parametrize("flags, message", [
    (["--data-split", "test"], "--data-split has no effect without --data"),
    (["--image-column", "img"], "--image-column has no effect without --data"),
    (["--embed-from", "sr2"], "--embed-from has no effect without --init-from"),
    (["--fresh-lr-scale", "3"], "--fresh-lr-scale has no effect without --init-from"),
])
def test_options_without_effect_are_refused(flags: list[str], message: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = cli(["--tasks", "sr2", "--max-steps", "1", "--output-dir", str(tmp_path), *FAST_FLAGS, *flags], capsys)
    assert rc == 2 and message in err


# -- 7. errors at the top -----------------------------------------------------------------------------------------
def test_cpu_only_machine_refuses_more_processes_than_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    n = (os.cpu_count() or 1) + 6
    monkeypatch.setenv("WORLD_SIZE", str(n))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(n))
    with pytest.raises(ValueError, match=rf"{n} processes on a machine without a GPU .* at most --num_processes"):
        check_cpu_processes(TrainConfig(tasks=["sr2"]))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    check_cpu_processes(TrainConfig(tasks=["sr2"]))


def test_readme_training_commands_use_distinct_output_dirs() -> None:
    blocks = (REPO / "README.md").read_text().split("```")[1::2]  # fenced code blocks
    lines = [ln for b in blocks for ln in b.splitlines()
             if ("core/train.py" in ln or ln.startswith("ipt train")) and "--resume" not in ln]
    assert len(lines) >= 4
    dirs = []
    for ln in lines:
        words = ln.split()
        if "--output-dir" in words:
            dirs.append(words[words.index("--output-dir") + 1])
        elif "--config" in words:
            dirs.append(yaml.safe_load((REPO / words[words.index("--config") + 1]).read_text())["output_dir"])
        else:
            dirs.append(str(TrainConfig.model_fields["output_dir"].default))
    assert len(dirs) == len(set(dirs)), dirs


def test_optimizer_and_loss_options_take_effect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The options table in docs/training.md: warm-up, Adam betas, temperature and the progress bar do something."""
    run = tmp_path / "a"
    train(cfg(run, tasks=["sr2"], max_steps=3, warmup_steps=4, lr=1e-3, lr_decay_steps=0, adam_beta1=0.5,
              adam_beta2=0.9, contrastive_temperature=1.0, progress=True))
    assert [r["lr"] for r in records(run)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4])
    assert "train: 100%" in capsys.readouterr().err  # the bar drew
    groups = torch.load(run / "checkpoints/step-3/state/optimizer.bin", weights_only=True)["param_groups"]
    assert tuple(groups[0]["betas"]) == (0.5, 0.9)
    train(cfg(tmp_path / "b", tasks=["sr2"], max_steps=1))
    assert records(run)[0]["contrastive"] != pytest.approx(records(tmp_path / "b")[0]["contrastive"], rel=1e-3)


def test_grad_clip_and_workers_take_effect(tmp_path: Path) -> None:
    common = dict(tasks=["denoise30"], max_steps=2, lr=1e-3)
    base = weights(train(cfg(tmp_path / "a", **common)))
    workers = weights(train(cfg(tmp_path / "b", num_workers=1, **common)))
    assert all(torch.equal(base[k], workers[k]) for k in base)  # batches are a function of (seed, step, rank)
    clipped = weights(train(cfg(tmp_path / "c", grad_clip=1e-12, **common)))
    unclipped = weights(train(cfg(tmp_path / "d", grad_clip=0, **common)))
    init = weights(train(cfg(tmp_path / "e", **{**common, "lr": 1e-30})))
    moved = {name: (w["body.pos_embed"] - init["body.pos_embed"]).abs().max().item()
             for name, w in (("clip", clipped), ("free", unclipped))}
    # a gradient clipped to norm 1e-12 is far below Adam's eps: the weights hardly move
    assert moved["clip"] < 1e-3 * moved["free"], moved


def test_resume_ignores_inactive_options_of_an_older_record(tmp_path: Path) -> None:
    """A record written with another default for an option that had no effect (an older version's
    --fresh-lr-scale without --init-from) must not make --resume refuse it."""
    run = tmp_path / "run"
    train(cfg(run, tasks=["sr2"], max_steps=1))
    config = run / "checkpoints/step-1/model/config.json"
    data = json.loads(config.read_text())
    data["training"]["config"]["fresh_lr_scale"] = 3.0
    config.write_text(json.dumps(data))
    train(cfg(run, tasks=["sr2"], max_steps=2, resume="latest"))
    assert yaml.safe_load((run / "config.yaml").read_text())["fresh_lr_scale"] == TrainConfig.default_of("fresh_lr_scale")


def test_max_minutes_ends_the_run_as_max_steps_would(tmp_path: Path) -> None:
    """A time budget (--max-minutes) stops after the first step past it and still writes the last checkpoint and
    the final model; the lr schedule is still that of --max-steps (no decay was reached)."""
    final = train(cfg(tmp_path / "a", tasks=["sr2"], lr=1e-3, max_steps=1000, max_minutes=1e-6))
    assert (final / "model.safetensors").is_file()
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [1]
    recs = records(tmp_path / "a")
    assert steps_logged(tmp_path / "a") == [1]
    assert recs[-1]["lr"] == pytest.approx(1e-3)
    meta = json.loads((final / "config.json").read_text())
    assert meta["training"]["step"] == 1

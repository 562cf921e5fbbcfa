"""The trainer (core/train.py) on the CPU with the tiny preset (one encoder + one decoder layer to stay fast)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from launch_helpers import free_port
import torch
from safetensors.torch import load_file

from ipt.cli import main as ipt_main
from ipt.core.training.losses import ipt_loss
from ipt.core.checkpoints.pretrained import read_config
from ipt.core.training.checkpoints import find_checkpoint, list_checkpoints
from ipt.core.training.run import init_model, train
from ipt.core.training.trainer import Trainer
from ipt.core.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
FAST: dict[str, Any] = {
    "preset": "tiny",
    "model": {"num_enc_layers": 1, "num_dec_layers": 1},
    "batch_size": 2,
    "val_every": 0,
    "log_every": 1,
    "progress": False,
    "save_every": 1000,
}
FAST_FLAGS = ["--preset", "tiny", "--model", "num_enc_layers=1,num_dec_layers=1", "--batch-size", "2",
              "--no-progress", "--log-every", "1"]


def cfg(tmp: Path, **kw: Any) -> TrainConfig:
    return TrainConfig(**{**FAST, "output_dir": tmp, **kw})


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 2 steps on sr2 + denoise30 (its final model and checkpoints are reused below)."""
    run = tmp_path_factory.mktemp("pretrained")
    final = train(cfg(run, tasks=["sr2", "denoise30"], max_steps=2, save_every=1, keep_last=5))
    assert final == run / "model"
    return run


def test_pretraining_run_writes_model_config_plugins_and_log(pretrained: Path) -> None:
    saved = read_config(pretrained / "model")
    assert [t.name for t in saved.tasks] == ["sr2", "denoise30"]
    assert saved.model_extra["training"]["step"] == 2
    assert saved.model_extra["training"]["config"]["lr"] == 5e-5
    assert [s for s, _ in list_checkpoints(pretrained)] == [1, 2]
    step2 = pretrained / "checkpoints" / "step-2"
    assert find_checkpoint("latest", pretrained) == find_checkpoint(str(pretrained), pretrained) == step2
    assert find_checkpoint(str(pretrained / "checkpoints" / "step-1"), pretrained).name == "step-1"
    assert not list((pretrained / "checkpoints").glob(".*"))  # no temporary folders left behind
    resolved = (pretrained / "config.yaml").read_text()
    assert "max_steps: 2" in resolved and "- denoise30" in resolved
    plugins = json.loads((pretrained / "plugins.json").read_text())
    assert plugins["tasks"]["sr2"]["distribution"] == "ipt-framework" and plugins["tasks"]["sr2"]["scale"] == 2
    logs = records(pretrained)
    assert [r["step"] for r in logs] == [1, 2]
    for r in logs:
        assert r["loss"] == pytest.approx(r["l1"] + 0.1 * r["contrastive"], rel=1e-5)
        assert r["task"] in ("sr2", "denoise30") and r["patches_per_s"] > 0 and r["contrastive"] > 0


def test_multitask_steps_reduce_loss_on_fixed_batches(tmp_path: Path) -> None:
    from ipt.core.data.batches import TrainBatches, load_images
    from ipt.core.data.schedule import TaskSchedule

    c = cfg(tmp_path, tasks=["sr2", "denoise30"], lr=2e-3)
    model, _ = init_model(c)
    trainer = Trainer(c, model, total_steps=24, decay_at=None)
    tasks = ["sr2", "denoise30"]
    batches = TrainBatches(load_images(None), tasks, TaskSchedule(tasks, 0), 2, seed=0)
    fixed = {}
    for step in range(20):
        b = batches[step]
        fixed.setdefault(b["task"], b)
    assert set(fixed) == set(tasks)

    def l1(task: str) -> float:
        with torch.no_grad():
            b = fixed[task]
            return ipt_loss(trainer.unwrapped(b["lr"], task), b["hr"], None, 0.0)[0].item()

    before = {t: l1(t) for t in tasks}
    for i in range(24):
        assert trainer.step([fixed[tasks[i % 2]]])
    after = {t: l1(t) for t in tasks}
    for t in tasks:
        assert after[t] < 0.6 * before[t], (t, before[t], after[t])
    assert trainer.state.step == 24 and trainer.stats.steps == 24
    assert set(trainer.stats.read()["task_loss"]) == set(tasks)


def test_resume_is_exact_with_ema(tmp_path: Path) -> None:
    common = dict(tasks=["sr2", "derain"], lr=1e-3, lr_decay_steps=3, ema_decay=0.5)
    straight = train(cfg(tmp_path / "a", max_steps=4, **common))
    train(cfg(tmp_path / "b", max_steps=2, **common))
    resumed = train(cfg(tmp_path / "b", max_steps=4, resume="latest", **common))
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)
    # The raw (non-EMA) weights in the accelerate state match too, and differ from the EMA export.
    raw_a = load_file(str(tmp_path / "a/checkpoints/step-4/state/model.safetensors"))
    raw_b = load_file(str(tmp_path / "b/checkpoints/step-4/state/model.safetensors"))
    assert all(torch.allclose(raw_a[k], raw_b[k], atol=1e-6, rtol=0) for k in raw_a)
    assert not torch.equal(raw_a["body.pos_embed"], a["body.pos_embed"])
    assert [r["step"] for r in records(tmp_path / "b")] == [1, 2, 3, 4]
    lrs = [r["lr"] for r in records(tmp_path / "b")]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 4e-4])  # x0.4 from the 4th step (index 3) on


def test_contrastive_weight_zero_with_accumulation_and_checkpointing(tmp_path: Path) -> None:
    train(cfg(tmp_path, tasks=["denoise30"], max_steps=1, contrastive_weight=0.0, grad_accum=2,
              grad_checkpointing=True))
    (r,) = records(tmp_path)
    assert r["contrastive"] == 0.0 and r["loss"] == r["l1"] and r["task_loss"] == {"denoise30": r["loss"]}


def test_finetune_keeps_body_and_known_heads_adds_new_ones(pretrained: Path, tmp_path: Path) -> None:
    source = weights(pretrained / "model")
    c = TrainConfig(tasks=["sr3", "sr2"], init_from=pretrained / "model", output_dir=tmp_path)
    assert c.base_lr == 2e-5 and c.decay_step(100, None, 1) is None
    model, notes = init_model(c)
    assert model.task_names == ["sr3", "sr2"] and "new sr3" in notes[0] and "dropped denoise30" in notes[0]
    state = model.state_dict()
    for k, v in source.items():
        if k.startswith("body.") or ".sr2" in k or k.endswith("task_embed.sr2"):
            assert torch.equal(state[k], v), k
    assert not any("denoise30" in k for k in state) and "heads.sr3.0.weight" in state


def test_finetune_frozen_body_to_new_task(pretrained: Path, tmp_path: Path) -> None:
    final = train(cfg(tmp_path, tasks=["sr3"], init_from=pretrained / "model", freeze="body", max_steps=1,
                      preset="tiny", lr=1e-3))
    src, out = weights(pretrained / "model"), weights(final)
    body = [k for k in src if k.startswith("body.")]
    assert body and all(torch.equal(out[k], src[k]) for k in body)
    assert {k.split(".")[1] for k in out if k.startswith("heads.")} == {"sr3"}
    assert [t.name for t in read_config(final).tasks] == ["sr3"]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and the last stderr line (datasets may draw progress bars before it)."""
    rc = ipt_main(["train", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error message"
    return rc, err[-1]


def test_bad_inputs_give_one_line_errors(pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--output-dir", str(tmp_path / "run"), "--max-steps", "1", *FAST_FLAGS]
    rc, err = _cli(["--tasks", "sr2,dnoise30", *out], capsys)
    assert rc == 2 and "unknown task 'dnoise30'" in err and "denoise50" in err

    (tmp_path / "empty").mkdir()
    rc, err = _cli(["--tasks", "sr2", "--data", str(tmp_path / "empty"), *out], capsys)
    assert rc == 2 and "is empty" in err

    table = tmp_path / "table"
    table.mkdir()
    (table / "rows.csv").write_text("caption,score\nhello,1\nworld,2\n")
    rc, err = _cli(["--tasks", "sr2", "--data", str(table), *out], capsys)
    assert rc == 2 and "no image column" in err and "--image-column" in err

    rc, err = _cli(["--tasks", "sr2", "--resume", "--output-dir", str(pretrained), "--max-steps", "3",
                    *FAST_FLAGS], capsys)
    assert rc == 2 and "trained with tasks=['sr2', 'denoise30']" in err and "--output-dir" in err

    rc, err = _cli(["--tasks", "sr2,denoise30", "--output-dir", str(pretrained), *FAST_FLAGS], capsys)
    assert rc == 2 and "already holds checkpoints" in err and "--resume" in err

    rc, err = _cli(["--tasks", "sr2", "--init-from", str(table), *out], capsys)
    assert rc == 2 and "not a model directory" in err

    rc, err = _cli(["--tasks", "sr2", "--init-from", str(pretrained / "model"), "--preset", "small",
                    "--output-dir", str(tmp_path / "ft")], capsys)
    assert rc == 2 and "architecture differs" in err and err.startswith("ipt train: error: --init-from")
    assert not (tmp_path / "run").exists()


def test_nonfinite_losses_stop_with_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    rc, err = _cli(["--tasks", "denoise30", "--lr", "1e30", "--max-nonfinite", "2", "--max-steps", "20",
                    "--output-dir", str(run), *FAST_FLAGS], capsys)
    assert rc == 3 and "non-finite losses in a row" in err and "no checkpoint was saved before it" in err
    assert list_checkpoints(run) == []  # the diverged state is not a resumable checkpoint
    (ck,) = (run / "checkpoints").glob("diverged-step-*")
    assert str(ck) in err and int(ck.name.split("-")[-1]) >= 3
    assert json.loads((ck / "state" / "train_state.json").read_text())["nonfinite_streak"] == 2


def _env() -> dict[str, str]:
    env = {**os.environ, "IPT_TRAIN_TRACE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("IPT_DEBUG", None)
    return env


def test_ipt_train_cli_with_example_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ipt = shutil.which("ipt", path=str(Path(sys.executable).parent)) or "ipt"
    proc = subprocess.run(
        [ipt, "train", "--config", str(REPO / "examples/train_multitask.yaml"), *FAST_FLAGS, "--max-steps", "2",
         "--output-dir", str(run), "--val-every", "2", "--val-patches", "2", "--save-every", "1", "--keep-last", "1",
         "--mixed-precision", "bf16"],
        capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"final model saved to {run / 'model'}" in proc.stderr and "mixed precision bf16" in proc.stderr
    six = ["sr2", "sr3", "sr4", "denoise30", "denoise50", "derain"]
    assert [t.name for t in read_config(run / "model").tasks] == six
    assert [s for s, _ in list_checkpoints(run)] == [2]  # --keep-last 1
    val = [r for r in records(run) if r.get("validation")]
    assert len(val) == 1 and set(val[0]["psnr"]) == set(six)
    assert all(5 < v < 60 for v in val[0]["psnr"].values())
    # The tasks' own metrics (MetricConventions.report: psnr, ssim) are logged too; psnr is the same PSNR.
    assert set(val[0]["metrics"]) == set(six) and all(set(m) == {"psnr", "ssim"} for m in val[0]["metrics"].values())
    assert all(abs(val[0]["metrics"][t]["psnr"] - val[0]["psnr"][t]) < 1e-6 for t in six)
    assert all(-1 <= m["ssim"] <= 1 for m in val[0]["metrics"].values())


def test_two_processes_same_task_every_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # accelerate 1.x starts several CPU processes through its torchrun path (--multi_gpu); `--cpu --num_processes 2`
    # alone runs a single process unless an MPI hostfile is given. The trainer picks the gloo backend itself.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", "core/train.py", "--tasks", "sr2,derain", *FAST_FLAGS, "--max-steps", "4", "--seed", "3", "--output-dir", str(run), "--val-every", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traces = [[json.loads(x) for x in (run / f"trace-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [t["step"] for t in traces[0]] == [0, 1, 2, 3] == [t["step"] for t in traces[1]]
    assert [t["task"] for t in traces[0]] == [t["task"] for t in traces[1]]
    assert [t["task"] for t in traces[0]] == ["derain", "sr2", "derain", "derain"]  # TaskSchedule, seed 3
    assert all(a["checksum"] != b["checksum"] for a, b in zip(*traces))  # each rank its own crops
    assert "2 process(es)" in proc.stderr and (run / "model" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step-4" / "state" / "random_states_1.pkl").is_file()


def test_resume_from_an_older_checkpoint_does_not_log_steps_twice(tmp_path: Path) -> None:
    common = dict(tasks=["denoise30"], max_steps=3, save_every=1, keep_last=5)
    train(cfg(tmp_path, **common))
    assert [r["step"] for r in records(tmp_path) if not r.get("validation")] == [1, 2, 3]
    train(cfg(tmp_path, resume=str(tmp_path / "checkpoints" / "step-1"), **common))
    assert [r["step"] for r in records(tmp_path) if not r.get("validation")] == [1, 2, 3]

"""Flags and YAML derived from a pydantic model (core/config_cli.py), with TrainConfig as the real user."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from ipt.core.commands.options import ConfigError, add_model_arguments, dump_yaml, load_yaml, parse_config
from ipt.core.training.config import TrainConfig


class Demo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    names: list[str] = Field(..., description="Some names")
    count: int = Field(3, ge=1, description="How many")
    rate: float | None = Field(None, description="A rate")
    mode: Literal["a", "b"] | None = Field("a", description="The mode")
    flag: bool = Field(True, description="A switch")
    out: Path = Field(Path("x"), description="Where")
    resume: str | None = Field(None, description="Resume", json_schema_extra={"cli_const": "latest"})
    extra: dict = Field(default_factory=dict, description="Overrides")


def _parse(argv: list[str]) -> Demo:
    p = argparse.ArgumentParser()
    add_model_arguments(p, Demo)
    return parse_config(Demo, p.parse_args(argv))


def test_flags_types_and_defaults() -> None:
    d = _parse(["--names", "a, b,c", "--count", "5", "--rate", "0.5", "--mode", "b", "--no-flag",
                "--out", "o/p", "--resume", "--extra", "n=4,s=x,f=1.5"])
    assert d == Demo(names=["a", "b", "c"], count=5, rate=0.5, mode="b", flag=False, out=Path("o/p"),
                     resume="latest", extra={"n": 4, "s": "x", "f": 1.5})
    d = _parse(["--names", "z", "--mode", "none", "--resume", "ckpt/step-3"])
    assert d.mode is None and d.resume == "ckpt/step-3" and d.count == 3 and d.flag is True


def test_help_shows_description_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    add_model_arguments(p, Demo)
    p.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--count N How many (default: 3)" in text and "--flag, --no-flag" in text
    assert "--mode {a,b,none}" in text and "(default: required)" in text


def test_yaml_then_cli_override_only_given_flags(tmp_path: Path) -> None:
    f = tmp_path / "run.yaml"
    f.write_text("names: [p, q]\ncount: 7\nflag: false\n")
    d = _parse(["--config", str(f), "--count", "9"])
    assert d.names == ["p", "q"] and d.count == 9 and d.flag is False  # flag from YAML kept: not given on the CLI


def test_dump_yaml_round_trips(tmp_path: Path) -> None:
    d = Demo(names=["a"], rate=0.25, out=Path("r/s"), extra={"k": 1})
    f = tmp_path / "d.yaml"
    f.write_text(dump_yaml(d))
    assert _parse(["--config", str(f)]) == d


@pytest.mark.parametrize(
    ("yaml_text", "argv", "message"),
    [
        ("names: [a]\ncuont: 3\n", [], r"run.yaml: unknown option 'cuont'"),
        ("names: [a]\ncount: 0\n", [], r"run.yaml: count: Input should be greater than or equal to 1 \(got 0\)"),
        ("names: [a]\n", ["--count", "0"], r"^--count: Input should be greater than or equal to 1"),
        ("names: [a]\nmode: c\n", [], r"run.yaml: mode: Input should be 'a' or 'b'"),
        ("[1, 2]\n", [], r"expected a mapping"),
        ("names: [a\n", [], r"invalid YAML \(line"),
    ],
)
def test_errors_are_one_line_naming_key_or_flag(tmp_path: Path, yaml_text: str, argv: list[str], message: str) -> None:
    f = tmp_path / "run.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as info:
        _parse(["--config", str(f), *argv])
    assert "\n" not in str(info.value)


def test_missing_config_file_and_bad_cli_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(SystemExit):
        _parse(["--names", "a", "--count", "many"])
    assert "argument --count: invalid int value: 'many'" in capsys.readouterr().err


def test_train_config_unknown_task_lists_known_ones() -> None:
    p = argparse.ArgumentParser()
    add_model_arguments(p, TrainConfig)
    with pytest.raises(ConfigError) as info:
        parse_config(TrainConfig, p.parse_args(["--tasks", "sr2,dreain"]))
    msg = str(info.value)
    assert msg.startswith("--tasks: unknown task 'dreain'") and "did you mean 'derain'" in msg and "sr4" in msg


def test_train_config_derived_values(tmp_path: Path) -> None:
    cfg = TrainConfig(tasks=["sr2"], max_steps=300)
    assert cfg.base_lr == 5e-5 and cfg.decay_step(300, None, 1) == 200
    assert [cfg.lr_factor(s, 300, 200) for s in (0, 199, 200)] == [1.0, 1.0, 0.4]
    warm = TrainConfig(tasks=["sr2"], warmup_steps=4)
    assert warm.lr_factor(0, 100, None) == 0.25 and warm.lr_factor(3, 100, None) == 1.0
    ep = TrainConfig(tasks=["sr2"], epochs=3, batch_size=4, lr_decay_epochs=2, crops_per_image=1)
    assert ep.steps_per_epoch(10, 1) == 3 and ep.total_steps(10, 1) == 9 and ep.decay_step(9, 10, 1) == 6
    # The default of 4 crops per decoded image: an epoch is 4 patches per image.
    assert TrainConfig(tasks=["sr2"], epochs=1, batch_size=4).steps_per_epoch(10, 1) == 10
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(tasks=["sr2"], max_steps=3, epochs=1)
    with pytest.raises(ValueError, match="not a model directory"):
        TrainConfig(tasks=["sr2"], init_from=tmp_path)
    with pytest.raises(ValueError, match="tracker 'no_such_tracker' is not installed"):
        TrainConfig(tasks=["sr2"], report_to=["no_such_tracker"])
    assert TrainConfig(tasks=["sr2"], report_to=["none"]).report_to == []

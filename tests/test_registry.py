"""The task registry: validation, isolation of broken plugins, duplicates, families, disabling."""

from __future__ import annotations

import types

import pytest
import torch

from ipt.registry import MetricConventions, TaskFamily, TaskSpec, hookimpl
from ipt.registry.manager import TaskRegistry, UnknownTaskError, get_registry


def _identity(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x.clone()


def _plugin(**hooks: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def _spec(name: str, **kw: object) -> TaskSpec:
    return TaskSpec(name=name, description=f"test task {name}", degrade=_identity, **kw)


def test_builtin_tasks_are_registered_through_entry_points() -> None:
    reg = get_registry()
    for name in ("sr2", "sr3", "sr4", "denoise30", "denoise50", "derain", "deblur"):
        spec = reg.get(name)
        assert spec.distribution == "ipt-framework" and spec.version
    assert {"sr", "denoise", "derain", "deblur"} <= set(reg.plugins)
    assert not reg.errors()


def test_family_resolves_any_noise_level() -> None:
    reg = get_registry()
    spec = reg.get("denoise70")
    assert spec.name == "denoise70" and spec.scale == 1 and spec.params["sigma"] == 70
    assert reg.get("denoise70") is spec  # built once
    assert "denoise70" not in reg.names()


def test_unknown_task_lists_known_and_suggests() -> None:
    with pytest.raises(UnknownTaskError) as err:
        get_registry().get("sr5")
    msg = str(err.value)
    assert "unknown task 'sr5'" in msg and "did you mean" in msg and "sr2" in msg and "denoise<sigma>" in msg


def test_broken_plugin_is_isolated() -> None:
    good = _plugin(ipt_register_tasks=lambda: [_spec("good")])

    def boom() -> list[TaskSpec]:
        raise RuntimeError("kaboom")

    broken = _plugin(ipt_register_tasks=boom)
    invalid = _plugin(ipt_register_tasks=lambda: [{"name": "Bad Name", "description": "x", "degrade": _identity}])
    reg = TaskRegistry(
        [("good", good, "dist-good", "1.0"), ("broken", broken, "dist-broken", "2.0"), ("invalid", invalid, "dist-inv", "3")]
    )
    assert reg.get("good").distribution == "dist-good"
    assert "kaboom" in reg.plugins["broken"].error
    assert "name" in reg.plugins["invalid"].error and "Bad Name" in reg.plugins["invalid"].error
    assert reg.plugins["good"].error is None


def test_duplicate_task_names_name_both_distributions() -> None:
    a = _plugin(ipt_register_tasks=lambda: [_spec("same")])
    b = _plugin(ipt_register_tasks=lambda: [_spec("same", scale=2)])
    reg = TaskRegistry([("a", a, "dist-a", "1.0"), ("b", b, "dist-b", "2.0")])
    assert reg.get("same").distribution == "dist-a"
    err = reg.plugins["b"].error
    assert "dist-a" in err and "dist-b" in err and "same" in err


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="task name"):
        _spec("9lives")
    with pytest.raises(ValueError, match="scale"):
        _spec("zero", scale=0)
    with pytest.raises(ValueError, match="description"):
        TaskSpec(name="x", description=" ", degrade=_identity)
    with pytest.raises(ValueError):
        TaskSpec(name="x", description="d", degrade="not callable")


def test_metric_conventions_default_border() -> None:
    assert _spec("a", scale=3).crop_border == 3
    assert _spec("b").crop_border == 0
    assert _spec("c", scale=2, metrics=MetricConventions(crop_border=0)).crop_border == 0


def test_family_errors_name_the_plugin() -> None:
    def build(name: str, n: str) -> TaskSpec:
        raise ValueError("n too large")

    fam = TaskFamily(name="fam<n>", description="d", pattern=r"fam(?P<n>\d+)", build=build)
    reg = TaskRegistry([("famplug", _plugin(ipt_register_task_families=lambda: [fam]), "dist-fam", "0.1")])
    with pytest.raises(Exception, match="famplug.*dist-fam.*n too large"):
        reg.get("fam3")


def test_disable_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPT_DISABLE_PLUGINS", "derain, deblur")
    reg = TaskRegistry()
    assert reg.plugins["derain"].disabled and "derain" not in reg.names()
    assert "sr2" in reg.names()
    with pytest.raises(UnknownTaskError, match="disabled by IPT_DISABLE_PLUGINS"):
        reg.get("derain")


def test_degrade_accepts_single_images_and_batches() -> None:
    spec = get_registry().get("denoise30")
    clean = torch.full((2, 3, 16, 16), 128.0)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(spec.degrade(clean, g1), spec.degrade(clean, g2))
    assert spec.degrade(clean[0], torch.Generator().manual_seed(0)).shape == (3, 16, 16)
    with pytest.raises(ValueError, match="denoise30"):
        spec.degrade(torch.zeros(1, 16, 16, 3))

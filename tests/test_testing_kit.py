"""The plugin test kit ``ipt.testing``: it passes good plugins and names what is wrong with bad ones."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import ipt.testing as kit
from ipt.testing import ipt_task_checker  # noqa: F401 - the kit's pytest fixture, imported like a plugin author may
from ipt.core.model.blocks import build_head
from ipt.registry import TaskSpec, hookimpl
from ipt.registry.manager import TaskRegistry


def _noise(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(clean.shape, generator=generator)
    return (clean + 10 * noise).clamp(0, 255)


def _spec(**kw: Any) -> TaskSpec:
    return TaskSpec(**{"name": "toy", "description": "toy task", "degrade": _noise, **kw})


@pytest.fixture
def registry_with(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Make ``get_registry()`` return a registry holding the given specs (as plugin 'toy' of 'toy-dist' 1.0)."""
    from ipt.registry import manager

    def install(*specs: TaskSpec) -> TaskRegistry:
        plugin = SimpleNamespace(ipt_register_tasks=hookimpl(lambda: list(specs)))
        registry = TaskRegistry(plugins=[("toy", plugin, "toy-dist", "1.0")])
        monkeypatch.setattr(manager, "_REGISTRY", registry)
        return registry

    return install


# -- the built-in plugins pass -----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["sr2", "denoise30"])
def test_builtin_tasks_pass_the_whole_kit(task: str, tmp_path: Path) -> None:
    kit.check_task_plugin(task, distribution="ipt-framework", tmp_dir=tmp_path)
    assert (tmp_path / f"roundtrip-{task}" / "model.safetensors").is_file()


def test_family_tasks_are_discovered() -> None:
    spec = kit.assert_discovered("denoise70", "ipt-framework")
    assert spec.name == "denoise70" and spec.plugin == "denoise"


# -- discovery ---------------------------------------------------------------------------------------------------
def test_discovered_names_the_wrong_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    kit.assert_discovered("sr2", "ipt-framework")
    # Another installed distribution with an entry point in the group 'ipt' that does not provide sr2.
    other = SimpleNamespace(entry_points=[SimpleNamespace(group="ipt", name="x", value="x")])
    monkeypatch.setattr(kit.metadata, "distribution", lambda name: other)
    message = r"'sr2': provided by 'ipt-framework' \(plugin 'sr'\), not by 'ipt-plugin-x'"
    with pytest.raises(AssertionError, match=message):
        kit.assert_discovered("sr2", "ipt-plugin-x")


def test_discovered_fails_for_missing_distribution_and_task() -> None:
    with pytest.raises(AssertionError, match="'ipt-plugin-nope' is not installed"):
        kit.assert_discovered("nope", "ipt-plugin-nope")
    with pytest.raises(AssertionError, match="not found through the entry points: unknown task 'sr7'"):
        kit.assert_discovered("sr7")
    # a distribution without entry points in the group 'ipt'
    with pytest.raises(AssertionError, match="'pytest' declares no entry point in the group 'ipt'"):
        kit.assert_discovered("sr2", "pytest")


def test_discovered_reports_a_disabled_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPT_DISABLE_PLUGINS", "sr")
    with pytest.raises(AssertionError, match="plugin sr of 'ipt-framework' is disabled by IPT_DISABLE_PLUGINS"):
        kit.assert_discovered("sr2", "ipt-framework")


# -- the spec ----------------------------------------------------------------------------------------------------
def test_spec_valid_rejects_unvalidated_and_non_json_specs() -> None:
    kit.assert_spec_valid(_spec(params={"sigma": 10, "range": [1, 2]}))
    with pytest.raises(AssertionError, match="params must be JSON-serialisable"):
        kit.assert_spec_valid(_spec(params={"kernel": torch.ones(3)}))
    bypassed = TaskSpec.model_construct(name="Bad", description="x", scale=1, degrade_fn=_noise)
    with pytest.raises(AssertionError, match="the name must match"):
        kit.assert_spec_valid(bypassed)
    with pytest.raises(AssertionError, match="expected a TaskSpec, got dict"):
        kit.assert_spec_valid({"name": "toy"})  # type: ignore[arg-type]


# -- degradation -------------------------------------------------------------------------------------------------
def test_degrade_checks_pass_for_a_good_spec() -> None:
    kit.assert_degrade_range_and_shape(_spec())
    kit.assert_degrade_seeded(_spec())


@pytest.mark.parametrize(
    ("degrade", "message"),
    [
        (lambda x, g: x + 300 * torch.rand(x.shape, generator=g), r"values in \[.*\]; images live on \[0, 255\]"),
        (lambda x, g: x.round().to(torch.uint8), "must return floats"),
        (lambda x, g: x.double(), "changed the dtype from torch.float32 to torch.float64"),
        (lambda x, g: x.where(x < 250, torch.nan), "NaN/inf values"),
        (lambda x, g: x.transpose(-1, -2).contiguous(), r"gave \(2, 3, 104, 96\), expected \(2, 3, 96, 104\)"),
        (lambda x, g: x.mul_(0.5), "modified its input in place"),
        (lambda x, g: x.cpu().numpy(), "must return a torch.Tensor, got ndarray"),
        (lambda x, g: x[0] if x.shape[0] == 1 else x, r"one \(3,H,W\) image gave \(96, 104\)"),
    ],
    ids=["range", "uint8", "dtype", "nan", "transposed", "in-place", "numpy", "single"],
)
def test_degrade_range_and_shape_failures(degrade: Any, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        kit.assert_degrade_range_and_shape(_spec(degrade=degrade))


def test_degrade_shape_follows_the_scale() -> None:
    full_size = _spec(scale=2, degrade=lambda x, g: x)  # forgot to downscale
    with pytest.raises(AssertionError, match=r"expected \(2, 3, 48, 56\) \(scale 2\)"):
        kit.assert_degrade_range_and_shape(full_size)
    kit.assert_degrade_range_and_shape(_spec(scale=2, degrade=lambda x, g: x[..., ::2, ::2]))


def test_degrade_errors_are_reported_with_the_input_shape() -> None:
    def fails(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raise RuntimeError("boom")

    message = r"degrade raised RuntimeError on an input of shape \(2, 3, 96, 104\): boom"
    with pytest.raises(AssertionError, match=message):
        kit.assert_degrade_range_and_shape(_spec(degrade=fails))


def test_seeded_catches_the_global_rng() -> None:
    global_rng = _spec(degrade=lambda x, g: (x + 10 * torch.randn(x.shape)).clamp(0, 255))
    with pytest.raises(AssertionError, match="never from the global RNG"):
        kit.assert_degrade_seeded(global_rng)


def test_seeded_and_deterministic_degradations() -> None:
    ignores_seed = _spec(degrade=lambda x, g: x * 0.5)
    with pytest.raises(AssertionError, match="different seeds gave identical outputs; pass deterministic=True"):
        kit.assert_degrade_seeded(ignores_seed)
    kit.assert_degrade_seeded(ignores_seed, deterministic=True)
    with pytest.raises(AssertionError, match="declared deterministic, but different seeds gave different outputs"):
        kit.assert_degrade_seeded(_spec(), deterministic=True)
    # scale > 1: deterministic is allowed by default (bicubic SR)
    kit.assert_degrade_seeded(_spec(scale=2, degrade=lambda x, g: x[..., ::2, ::2]))


def test_seeded_restores_the_callers_rng() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    kit.assert_degrade_seeded(_spec())
    assert torch.equal(torch.rand(3), expected)


# -- the model ---------------------------------------------------------------------------------------------------
class _Detached(nn.Module):
    """A head whose second conv is built but never used."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.main = build_head(cfg)
        self.unused = nn.Conv2d(cfg.n_feats, cfg.n_feats, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class _RandomBuffer(nn.Module):
    """A tail with a random, non-persistent buffer: not saved, so a loaded model differs."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cfg.n_feats, 3, 3, padding=1)
        self.register_buffer("offset", torch.rand(1, 3, 1, 1) * 10, persistent=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.conv(f) + self.offset


def test_model_checks_pass_for_default_parts_at_any_scale() -> None:
    for scale in (1, 3):
        spec = _spec(scale=scale, degrade=lambda x, g: x[..., ::scale, ::scale])
        kit.assert_model_shapes(spec)
        kit.assert_gradients_reach(spec)


def test_model_shapes_catch_a_tail_without_upsampler() -> None:
    no_upsampler = _spec(scale=2, build_tail=lambda cfg: nn.Conv2d(cfg.n_feats, 3, 3, padding=1))
    # Caught when the model adds the task (its dry run of a plugin's tail), reported by the kit as an assertion.
    message = r"the tail maps \(1,16,48,48\) to \(1, 3, 48, 48\), expected \(1,3,96,96\).*scale 2"
    with pytest.raises(AssertionError, match=message):
        kit.assert_model_shapes(no_upsampler)


def test_model_shapes_catch_a_head_with_the_wrong_width() -> None:
    narrow = _spec(build_head=lambda cfg: nn.Conv2d(3, 8, 3, padding=1))
    with pytest.raises(AssertionError, match=r"the head maps \(1,3,48,48\) to \(1, 8, 48, 48\).*\(1,16,48,48\)"):
        kit.assert_model_shapes(narrow)


def test_gradients_name_the_unused_parameters() -> None:
    with pytest.raises(AssertionError, match=r"no gradient: heads\.toy\.unused\.weight, heads\.toy\.unused\.bias"):
        kit.assert_gradients_reach(_spec(build_head=_Detached))


def test_gradients_catch_a_frozen_path() -> None:
    class Frozen(nn.Module):
        def __init__(self, cfg: Any) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cfg.n_feats, 3, 3, padding=1)

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            return self.conv(f.detach())  # cuts the head and the body off the loss

    with pytest.raises(AssertionError, match=r"no gradient: heads\.toy\.0\.weight.*task_embed\.toy"):
        kit.assert_gradients_reach(_spec(build_tail=Frozen))


def test_roundtrip_passes_and_records_the_distribution(registry_with: Any, tmp_path: Path) -> None:
    from ipt.core.checkpoints.pretrained import read_config

    spec = registry_with(_spec()).get("toy")
    kit.assert_save_load_roundtrip(spec, tmp_path)
    entry = read_config(tmp_path / "roundtrip-toy").tasks[0]
    assert (entry.name, entry.distribution, entry.version) == ("toy", "toy-dist", "1.0")


def test_roundtrip_catches_state_outside_the_state_dict(registry_with: Any, tmp_path: Path) -> None:
    spec = registry_with(_spec(build_tail=_RandomBuffer)).get("toy")
    with pytest.raises(AssertionError, match="outputs differ after save/load"):
        kit.assert_save_load_roundtrip(spec, tmp_path)


def test_roundtrip_needs_an_installed_task(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="'toy': not provided by any installed plugin"):
        kit.assert_save_load_roundtrip(_spec(), tmp_path)


def test_check_task_plugin_stops_at_the_first_problem(registry_with: Any) -> None:
    # Discovery goes through the real entry points, so a task that exists only in a test registry is not found.
    registry_with(_spec())
    with pytest.raises(AssertionError, match="'toy': not found through the entry points"):
        kit.check_task_plugin("toy")


def test_pytest_fixture(ipt_task_checker: Any) -> None:
    ipt_task_checker("denoise50", distribution="ipt-framework")


# -- a plugin written against the pre-rooms imports (issue 12) still loads ------------------------------------
def test_plugin_written_against_the_old_imports_still_works(registry_with: Any, tmp_path: Path) -> None:
    """``ipt.core.config`` / ``ipt.core.blocks`` (the imports ``docs/plugins.md`` used to give) and
    ``ipt.core.model`` / ``ipt.core.data`` / ``ipt.core.train`` keep working for one release."""
    from ipt.core.blocks import build_head as old_build_head
    from ipt.core.blocks import build_tail as old_build_tail
    from ipt.core.config import ModelConfig as OldModelConfig
    from ipt.core.config import preset as old_preset
    from ipt.core.data import TrainBatches  # noqa: F401
    from ipt.core.model import IPT, build_model  # noqa: F401
    from ipt.core.model.blocks import build_tail
    from ipt.core.model.config import ModelConfig
    from ipt.core.train import TrainConfig, train  # noqa: F401

    assert OldModelConfig is ModelConfig and old_build_tail is build_tail
    assert isinstance(old_preset("tiny"), ModelConfig)

    def head(cfg: OldModelConfig) -> nn.Module:  # a custom head the old way: the default one, built by hand
        return old_build_head(cfg)

    spec = registry_with(_spec(name="oldimports", build_head=head)).tasks["oldimports"]  # as registered
    kit.assert_model_shapes(spec)
    kit.assert_save_load_roundtrip(spec, tmp_path)


def test_flat_module_names_of_release_0_1_still_import() -> None:
    """User scripts (e.g. ``from ipt.core.resize import imresize`` in a bug report) keep working for one release:
    each old name is the moved module itself, with a DeprecationWarning that names the new home."""
    import importlib
    import sys

    import ipt.core
    from ipt.core.images import resize

    for old, new in ipt.core.MOVED_MODULES.items():
        sys.modules.pop(f"ipt.core.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"ipt.core.{old} moved to ipt.core.{new}"):
            module = importlib.import_module(f"ipt.core.{old}")
        assert module is importlib.import_module(f"ipt.core.{new}")
        assert module.__spec__.name == f"ipt.core.{new}"  # the real module keeps its own identity
    from ipt.core.resize import imresize  # the line of case 15's script

    assert imresize is resize.imresize
    with pytest.warns(DeprecationWarning, match="moved to ipt.core.inference.restorer"):
        from ipt.core.inference import TaskRestorer
    from ipt.core.inference.restorer import TaskRestorer as moved

    assert TaskRestorer is moved
    with pytest.raises(ImportError):
        importlib.import_module("ipt.core.no_such_module")

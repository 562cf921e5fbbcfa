"""A test kit for task plugins: check a plugin in one line, or one property at a time.

In a plugin's test suite::

    from ipt.testing import check_task_plugin

    def test_plugin() -> None:
        check_task_plugin("dehaze", distribution="ipt-plugin-dehaze")

Every check raises :class:`AssertionError` with a message that names the task and what is wrong.
:func:`check_task_plugin` runs them all, in this order:

* :func:`assert_discovered` - the installed distribution provides the task through an entry point of the
  group ``ipt``, and the real registry loads it without errors;
* :func:`assert_spec_valid` - the :class:`~ipt.registry.spec.TaskSpec` is complete and JSON-describable;
* :func:`assert_degrade_range_and_shape` - ``degrade`` gives float, finite values on [0, 255] of shape
  ``(B, in_channels, H/scale, W/scale)`` (and ``(in_channels, H/s, W/s)`` for one image), and leaves its input
  untouched (``in_channels`` = 3 + the task's ``extra_inputs``);
* :func:`assert_degrade_seeded` - the same seed gives the same output whatever the global RNG state; another seed
  gives another output, unless the degradation is deterministic: pass ``deterministic=True`` for one without
  randomness (a fixed JPEG quality, bicubic SR); scale > 1 tasks are not required to differ by default;
* :func:`assert_model_shapes` - head, body and tail map ``(B, in_channels, 48, 48)`` to
  ``(B, 3, 48*scale, 48*scale)``;
* :func:`assert_gradients_reach` - one forward/backward gives a gradient to every parameter of the task's head,
  tail and task embedding;
* :func:`assert_save_load_roundtrip` - ``save_pretrained``/``from_pretrained`` keeps the weights, the outputs and
  the distribution that provides the task.

The kit is also a pytest plugin: ``pytest_plugins = ["ipt.testing"]`` in a ``conftest.py`` gives the fixture
``ipt_task_checker`` (``ipt_task_checker("dehaze", distribution="ipt-plugin-dehaze")``, temporary files in
pytest's ``tmp_path``).
"""

from __future__ import annotations

import json
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ipt.registry.hookspecs import ENTRY_POINT_GROUP
from ipt.registry.spec import TASK_NAME_RE, MetricConventions, TaskSpec

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.model import IPT

__all__ = [
    "assert_degrade_range_and_shape",
    "assert_degrade_seeded",
    "assert_discovered",
    "assert_gradients_reach",
    "assert_model_shapes",
    "assert_save_load_roundtrip",
    "assert_spec_valid",
    "check_task_plugin",
    "model_inputs",
    "sample_images",
]

DEFAULT_SIZE = 96  # divisible by every supported scale (1, 2, 3, 4, 6, 8)


def _canonical(dist: str) -> str:
    """PEP 503 normalised distribution name (``IPT_Plugin.Dehaze`` == ``ipt-plugin-dehaze``)."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _fail(spec_or_name: TaskSpec | str, message: str) -> AssertionError:
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.name
    return AssertionError(f"task {name!r}: {message}")


# -- discovery and the spec ------------------------------------------------------------------------------------
def assert_discovered(task_name: str, distribution: str | None = None) -> TaskSpec:
    """The real registry (all entry points of the group ``ipt``) provides ``task_name``; returns its spec.

    With ``distribution``, the task must come from that installed distribution, which must declare an entry
    point in the group ``ipt`` and load without errors.
    """
    from ipt.registry.manager import PluginError, TaskRegistry, UnknownTaskError

    registry = TaskRegistry()  # a fresh load: sees what is installed now, whatever was cached before
    if distribution is not None:
        try:
            dist = metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            raise _fail(task_name, f"distribution {distribution!r} is not installed (pip install it first)") from None
        eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        if not eps:
            raise _fail(
                task_name,
                f"distribution {distribution!r} declares no entry point in the group {ENTRY_POINT_GROUP!r}; add "
                f'[project.entry-points.{ENTRY_POINT_GROUP}] NAME = "your_module" to its pyproject.toml',
            )
        mine = [i for i in registry.plugins.values() if _canonical(i.distribution or "") == _canonical(distribution)]
        broken = [f"{i.origin}: {i.error}" for i in mine if i.errors]
        disabled = [i.name for i in mine if i.disabled]
        if broken:
            raise _fail(task_name, "the plugin is broken: " + "; ".join(broken))
        if disabled:
            names = ", ".join(disabled)
            raise _fail(task_name, f"plugin {names} of {distribution!r} is disabled by IPT_DISABLE_PLUGINS")
    try:
        spec = registry.get(task_name)
    except UnknownTaskError as exc:
        raise _fail(task_name, f"not found through the entry points: {exc}") from None
    except PluginError as exc:  # e.g. the registry's dry run of degrade gave the wrong shape
        raise _fail(task_name, f"the registry rejects it: {exc}") from None
    if distribution is not None and _canonical(spec.distribution or "") != _canonical(distribution):
        raise _fail(
            task_name,
            f"provided by {spec.distribution!r} (plugin {spec.plugin!r}), not by {distribution!r}",
        )
    return spec


def assert_spec_valid(spec: TaskSpec) -> None:
    """``spec`` is a complete :class:`TaskSpec`: valid name, description, scale, callables, JSON-able params."""
    if not isinstance(spec, TaskSpec):
        raise AssertionError(f"expected a TaskSpec, got {type(spec).__name__}: {spec!r}")
    if not TASK_NAME_RE.match(spec.name):
        raise _fail(spec, f"the name must match {TASK_NAME_RE.pattern}")
    if not spec.description.strip():
        raise _fail(spec, "the description is empty")
    if not isinstance(spec.scale, int) or not 1 <= spec.scale <= 8:
        raise _fail(spec, f"scale must be an integer in 1..8, got {spec.scale!r}")
    if not callable(spec.degrade_fn):
        raise _fail(spec, "degrade is not callable")
    for field in ("build_head", "build_tail"):
        if getattr(spec, field) is not None and not callable(getattr(spec, field)):
            raise _fail(spec, f"{field} is neither None (the IPT default) nor callable")
    if not isinstance(spec.metrics, MetricConventions) or spec.metrics.color_space not in ("y", "rgb"):
        raise _fail(spec, f"metrics must be MetricConventions(color_space='y'|'rgb'), got {spec.metrics!r}")
    if spec.crop_border < 0:
        raise _fail(spec, f"negative crop border {spec.crop_border}")
    try:
        json.dumps(spec.params)
    except (TypeError, ValueError) as exc:
        raise _fail(spec, f"params must be JSON-serialisable (they are shown by 'ipt tasks --json'): {exc}") from None
    data = dict(spec)
    data["degrade"] = data.pop("degrade_fn")
    try:  # what the registry does for a dict; a spec built with model_construct() skipped it
        TaskSpec.model_validate(data)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, reported as an assertion
        raise _fail(spec, f"does not validate as a TaskSpec: {exc}") from None


# -- degradation -----------------------------------------------------------------------------------------------
def sample_images(
    batch: int = 2, height: int = DEFAULT_SIZE, width: int | None = None, seed: int = 1234
) -> torch.Tensor:
    """Test images ``(batch, 3, H, W)`` on the 0-255 scale: smooth gradients, random texture and saturated
    (exactly 0 and 255) patches, so that a missing clamp or a transposed axis shows."""
    width = height if width is None else width
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, 1, -1, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, -1)
    smooth = 255 * (0.6 * ys + 0.4 * xs).expand(batch, 3, height, width)
    texture = torch.rand(batch, 3, height, width, generator=g) * 255
    img = 0.5 * smooth + 0.5 * texture
    img[..., : height // 4, : width // 4] = 255.0
    img[..., -(height // 4) :, -(width // 4) :] = 0.0
    return img.contiguous()


def _sizes(spec: TaskSpec, size: int) -> tuple[int, int]:
    """A non-square (H, W) with both sides divisible by the scale (W = H + 8*scale shows swapped axes)."""
    s = spec.scale
    h = max(size - size % s, s)
    return h, h + 8 * s


def _degrade(spec: TaskSpec, clean: torch.Tensor, seed: int) -> Any:
    """The plugin's own function (not :meth:`TaskSpec.degrade`, which checks the shape and passes a copy), so the
    kit sees exactly what the plugin returns and whether it writes into its input."""
    single = clean.dim() == 3
    try:
        out = spec.degrade_fn(clean.unsqueeze(0) if single else clean, torch.Generator().manual_seed(seed))
    except Exception as exc:  # noqa: BLE001 - report which input made it fail
        shape = tuple(clean.shape)
        raise _fail(spec, f"degrade raised {type(exc).__name__} on an input of shape {shape}: {exc}") from exc
    return out[0] if single and isinstance(out, torch.Tensor) else out  # as TaskSpec.degrade does


def assert_degrade_range_and_shape(spec: TaskSpec, size: int = DEFAULT_SIZE) -> None:
    """``degrade`` returns float, finite values on [0, 255] of shape ``(B, in_channels, H/s, W/s)`` in the input's
    dtype (``in_channels`` = 3 + the task's extra inputs), and does not modify its input."""
    h, w = _sizes(spec, size)
    s, c = spec.scale, spec.in_channels
    clean = sample_images(2, h, w)
    before = clean.clone()
    out = _degrade(spec, clean, 0)
    if not torch.equal(clean, before):
        raise _fail(spec, "degrade modified its input in place (the clean image is the training target)")
    if not isinstance(out, torch.Tensor):
        raise _fail(spec, f"degrade must return a torch.Tensor, got {type(out).__name__}")
    expected = (2, c, h // s, w // s)
    if tuple(out.shape) != expected:
        extra = f", {c} channels: RGB + {', '.join(e.name for e in spec.extra_inputs)}" if c > 3 else ""
        raise _fail(
            spec,
            f"degrade of a {tuple(clean.shape)} batch gave {tuple(out.shape)}, expected {expected} (scale {s}{extra})",
        )
    if not out.is_floating_point():
        raise _fail(spec, f"degrade must return floats on the 0-255 scale, got dtype {out.dtype}")
    if out.dtype != clean.dtype:
        raise _fail(spec, f"degrade changed the dtype from {clean.dtype} to {out.dtype}")
    if not torch.isfinite(out).all():
        raise _fail(spec, f"degrade gave {int((~torch.isfinite(out)).sum())} NaN/inf values")
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 255.0:
        raise _fail(spec, f"degrade gave values in [{lo:.3g}, {hi:.3g}]; images live on [0, 255] (clamp the output)")
    single = _degrade(spec, clean[0], 0)
    if tuple(single.shape) != expected[1:]:
        raise _fail(spec, f"degrade of one (3,H,W) image gave {tuple(single.shape)}, expected {expected[1:]}")


def assert_degrade_seeded(spec: TaskSpec, size: int = DEFAULT_SIZE, deterministic: bool | None = None) -> None:
    """All randomness of ``degrade`` comes from its ``torch.Generator``.

    The same seed gives identical outputs even when the global RNG (``torch.manual_seed``) differs. Different
    seeds must give different outputs, unless the degradation is deterministic: ``deterministic=True`` requires
    identical outputs for any seed, ``False`` requires a difference, ``None`` (default) requires a difference for
    scale-1 tasks only (SR's bicubic downscaling is deterministic).
    """
    h, w = _sizes(spec, size)
    clean = sample_images(2, h, w)
    state = torch.get_rng_state()
    try:
        torch.manual_seed(1)
        a = _degrade(spec, clean, 7)
        torch.manual_seed(2)
        b = _degrade(spec, clean, 7)
        other = _degrade(spec, clean, 8)
    finally:
        torch.set_rng_state(state)
    if not torch.equal(a, b):
        raise _fail(
            spec,
            "the same generator seed gave different outputs: degrade must draw every random number from the "
            "generator it is given (torch.rand(..., generator=generator)), never from the global RNG",
        )
    same = torch.equal(a, other)
    if deterministic is None:
        deterministic = None if spec.scale > 1 else False
    if deterministic is False and same:
        raise _fail(spec, "different seeds gave identical outputs; pass deterministic=True if that is by design")
    if deterministic is True and not same:
        raise _fail(spec, "declared deterministic, but different seeds gave different outputs")


# -- the model -------------------------------------------------------------------------------------------------
def _model(spec: TaskSpec, preset: str, seed: int = 0) -> "IPT":
    from ipt.core.model.config import preset as make_config
    from ipt.core.model import IPT

    try:
        with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
            torch.manual_seed(seed)
            return IPT(make_config(preset), [spec])
    except Exception as exc:  # noqa: BLE001 - e.g. the model's dry run of a custom head or tail (PluginError)
        raise _fail(spec, f"building the model (preset {preset!r}) failed: {type(exc).__name__}: {exc}") from exc


def model_inputs(spec: TaskSpec, batch: int, size: int, seed: int = 1234) -> torch.Tensor:
    """Network inputs ``(batch, in_channels, size, size)`` on 0-255: :func:`sample_images`, then one more sample
    per extra input (its first ``channels`` channels), so a head that ignores a channel still gets varied data."""
    x = sample_images(batch, size, size, seed)
    extra = [sample_images(batch, size, size, seed + 1 + i)[:, : e.channels] for i, e in enumerate(spec.extra_inputs)]
    return torch.cat([x, *extra], dim=1) if extra else x


def assert_model_shapes(spec: TaskSpec, preset: str = "tiny") -> None:
    """Head, body and tail give ``(B, 3, 48*scale, 48*scale)`` for ``(B, in_channels, 48, 48)`` input."""
    model = _model(spec, preset).eval()
    cfg = model.config
    p, s, c, k = cfg.patch_size, spec.scale, cfg.n_feats, spec.in_channels
    x = model_inputs(spec, 2, p)
    with torch.no_grad():
        f = model.heads[spec.name](x)
        if tuple(f.shape) != (2, c, p, p):
            raise _fail(spec, f"the head maps (2,{k},{p},{p}) to {tuple(f.shape)}, the body needs (2,{c},{p},{p})")
        y = model.tails[spec.name](f)
        if tuple(y.shape) != (2, 3, p * s, p * s):
            raise _fail(
                spec, f"the tail maps (2,{c},{p},{p}) to {tuple(y.shape)}, expected (2,3,{p * s},{p * s}) (scale {s})"
            )
        out = model(x, spec.name)
    if tuple(out.shape) != (2, 3, p * s, p * s):
        raise _fail(spec, f"the model gives {tuple(out.shape)}, expected (2,3,{p * s},{p * s})")
    if not torch.isfinite(out).all():
        raise _fail(spec, "the model output has NaN/inf values")


def assert_gradients_reach(spec: TaskSpec, preset: str = "tiny") -> None:
    """One forward/backward gives a finite, non-zero gradient to every parameter of the task's head and tail and
    to its task embedding (an unused layer or a detached path shows here)."""
    model = _model(spec, preset).train()
    p, s = model.config.patch_size, spec.scale
    x = model_inputs(spec, 2, p)
    target = sample_images(2, p * s, p * s, seed=99)
    loss = (model(x, spec.name) - target).abs().mean()
    loss.backward()
    params = [(f"heads.{spec.name}.{n}", q) for n, q in model.heads[spec.name].named_parameters()]
    params += [(f"tails.{spec.name}.{n}", q) for n, q in model.tails[spec.name].named_parameters()]
    params.append((f"task_embed.{spec.name}", model.task_embed[spec.name]))
    missing = [n for n, q in params if q.grad is None]
    bad = [n for n, q in params if q.grad is not None and not torch.isfinite(q.grad).all()]
    zero = [n for n, q in params if q.grad is not None and not bool(q.grad.abs().sum() > 0)]
    problems = []
    for title, names in (("no gradient", missing), ("non-finite gradient", bad), ("all-zero gradient", zero)):
        if names:
            problems.append(f"{title}: {', '.join(names)}")
    if problems:
        raise _fail(spec, "a forward/backward does not reach every parameter (" + "; ".join(problems) + ")")


def assert_save_load_roundtrip(spec: TaskSpec, tmp_dir: str | Path, preset: str = "tiny") -> None:
    """``save_pretrained`` then ``IPT.from_pretrained`` gives the same tensors and outputs, and ``config.json``
    names the task's distribution and version (so a missing plugin can be named when loading).

    Loading resolves the task by name through the installed plugins, so the task must be discoverable.
    """
    from ipt.core.model import IPT
    from ipt.core.checkpoints.pretrained import CheckpointError, read_config
    from ipt.registry.manager import get_registry

    registry = get_registry()
    if spec.name not in registry.names():
        try:
            registry.get(spec.name)
        except Exception:  # noqa: BLE001
            raise _fail(spec, "not provided by any installed plugin, so a saved model cannot be loaded") from None
    model = _model(spec, preset, seed=3).eval()
    directory = Path(tmp_dir) / f"roundtrip-{spec.name}"
    model.save_pretrained(directory)
    try:
        loaded = IPT.from_pretrained(directory).eval()
    except CheckpointError as exc:
        raise _fail(spec, f"loading the saved model failed: {exc}") from exc
    if loaded.task_names != [spec.name]:
        raise _fail(spec, f"the loaded model has tasks {loaded.task_names}")
    saved, back = model.state_dict(), loaded.state_dict()
    differ = [k for k in saved if k not in back or not torch.equal(saved[k], back[k])]
    if differ:
        raise _fail(spec, f"tensors changed by save/load: {', '.join(differ[:8])}")
    x = model_inputs(spec, 2, model.config.patch_size)
    with torch.no_grad():
        before, after = model(x, spec.name), loaded(x, spec.name)
    if not torch.equal(before, after):
        diff = float((before - after).abs().max())
        raise _fail(spec, f"outputs differ after save/load (max abs diff {diff:.3g}); state outside state_dict()?")
    entry = read_config(directory).tasks[0]
    origin = registry.get(spec.name)
    if (entry.distribution, entry.version) != (origin.distribution, origin.version):
        raise _fail(
            spec,
            f"config.json records {entry.distribution} {entry.version}, the installed plugin is "
            f"{origin.distribution} {origin.version}",
        )


# -- everything ------------------------------------------------------------------------------------------------
def check_task_plugin(
    task_name: str,
    *,
    distribution: str | None = None,
    preset: str = "tiny",
    deterministic: bool | None = None,
    tmp_dir: str | Path | None = None,
) -> None:
    """Run every check of the kit on the installed task ``task_name`` (see the module docstring).

    ``distribution`` (recommended) also checks that the task comes from that distribution's entry point;
    ``deterministic`` is passed to :func:`assert_degrade_seeded`; ``tmp_dir`` holds the saved model (a
    temporary directory by default).
    """
    spec = assert_discovered(task_name, distribution)
    assert_spec_valid(spec)
    assert_degrade_range_and_shape(spec)
    assert_degrade_seeded(spec, deterministic=deterministic)
    assert_model_shapes(spec, preset)
    assert_gradients_reach(spec, preset)
    if tmp_dir is not None:
        assert_save_load_roundtrip(spec, tmp_dir, preset)
    else:
        with tempfile.TemporaryDirectory(prefix="ipt-kit-") as tmp:
            assert_save_load_roundtrip(spec, tmp, preset)


# -- pytest plugin ---------------------------------------------------------------------------------------------
try:  # pytest is a test-time dependency only
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def ipt_task_checker(tmp_path: Path) -> Callable[..., None]:
        """``ipt_task_checker(task_name, distribution=..., preset="tiny", deterministic=None)`` runs
        :func:`check_task_plugin` with its files under ``tmp_path``."""

        def check(task_name: str, **kwargs: Any) -> None:
            check_task_plugin(task_name, tmp_dir=tmp_path, **kwargs)

        return check

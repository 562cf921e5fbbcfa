"""What ``ipt plugin new NAME`` writes: a task plugin package that installs and passes its tests as generated.

:func:`plugin_files` returns ``{relative path: text}`` for the package ``ipt-plugin-NAME``:

* ``pyproject.toml`` - the distribution, its entry point in the group ``ipt`` and the kit as a pytest plugin;
* ``ipt_plugin_NAME/__init__.py`` - a placeholder degradation (seeded Gaussian noise of a random level, after an
  area downscale for ``scale > 1``) and the hook ``ipt_register_tasks``;
* ``tests/test_NAME.py`` - the kit's :func:`~ipt.testing.check_task_plugin` and one hand-computed check;
* ``README.md`` - install, test, train, evaluate.
"""

from __future__ import annotations

import re
import textwrap

from ipt.registry.spec import TASK_NAME_RE

SUPPORTED_SCALES = (1, 2, 3, 4, 8)  # what the default IPT tail supports (pixel shuffle: 3 and powers of two)


def names(task: str) -> tuple[str, str]:
    """``(distribution, module)`` for a task name: ``my_task`` -> ``ipt-plugin-my-task``, ``ipt_plugin_my_task``.

    Raises ``ValueError`` for a name that is not a task name (``^[a-z][a-z0-9_]*$``).
    """
    if not TASK_NAME_RE.match(task):
        raise ValueError(f"{task!r} is not a task name: use lower case letters, digits and '_' ({TASK_NAME_RE.pattern})")
    return "ipt-plugin-" + re.sub("_", "-", task), "ipt_plugin_" + task


def plugin_files(task: str, scale: int = 1, ipt_version: str = "0.1") -> dict[str, str]:
    """The files of a new plugin package for ``task`` at ``scale`` (relative paths -> UTF-8 text)."""
    if scale not in SUPPORTED_SCALES:
        raise ValueError(f"--scale {scale}: the default IPT tail supports {', '.join(map(str, SUPPORTED_SCALES))}")
    dist, module = names(task)
    fields = {"task": task, "dist": dist, "module": module, "scale": scale, "ipt_version": ipt_version}
    return {
        "pyproject.toml": _PYPROJECT.format(**fields),
        f"{module}/__init__.py": _MODULE.format(**fields),
        f"tests/test_{task}.py": _TEST.format(**fields),
        "README.md": _README.format(**fields),
    }


_PYPROJECT = textwrap.dedent('''\
    [build-system]
    requires = ["setuptools>=69"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "{dist}"
    version = "0.1.0"
    description = "An IPT task plugin: {task}"
    readme = "README.md"
    requires-python = ">=3.10"
    dependencies = ["ipt-framework>={ipt_version}", "torch"]

    [project.optional-dependencies]
    test = ["pytest"]

    # IPT finds the task through this entry point: group `ipt`, name = the plugin name, value = the module.
    [project.entry-points.ipt]
    {task} = "{module}"

    [tool.setuptools]
    packages = ["{module}"]

    [tool.pytest.ini_options]
    testpaths = ["tests"]
    ''')

_MODULE = textwrap.dedent('''\
    """{dist}: the IPT task ``{task}``. See the plugin guide (docs/plugins.md of ipt-framework).

    Replace :func:`degrade` with your degradation; keep its contract: ``(B, 3, H, W)`` floats on 0-255 in,
    ``(B, 3, H/{scale}, W/{scale})`` floats on [0, 255] out, every random number drawn from ``generator``.
    """

    from __future__ import annotations

    import torch
    import torch.nn.functional as F

    from ipt.registry import MetricConventions, TaskSpec, hookimpl

    SCALE = {scale}
    SIGMA = (5.0, 25.0)  # noise level range, 0-255 scale


    def degrade(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Placeholder: area downscale by SCALE, then Gaussian noise of a level drawn per image from SIGMA."""
        x = F.avg_pool2d(clean, SCALE) if SCALE > 1 else clean
        u = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=generator.device).to(x)
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x)
        return (x + (SIGMA[0] + (SIGMA[1] - SIGMA[0]) * u) * noise).clamp(0, 255)


    def task() -> TaskSpec:
        return TaskSpec(
            name="{task}",
            description="{task}: describe the degradation this task removes",
            scale=SCALE,
            degrade=degrade,
            metrics=MetricConventions(color_space="y"),
            params={{"sigma": list(SIGMA)}},
        )


    @hookimpl
    def ipt_register_tasks() -> list[TaskSpec]:
        return [task()]
    ''')

_TEST = textwrap.dedent('''\
    """Tests of {dist}: the IPT plugin kit, then what is specific to this task."""

    import torch

    from ipt.testing import check_task_plugin
    from {module} import SCALE, degrade


    def test_plugin_passes_the_ipt_kit(tmp_path) -> None:
        check_task_plugin("{task}", distribution="{dist}", tmp_dir=tmp_path)


    def test_flat_image_keeps_its_mean() -> None:
        # A flat grey image: zero-mean noise keeps the mean near 128 (well inside [0, 255], so no clamping bias).
        clean = torch.full((2, 3, 48 * SCALE, 48 * SCALE), 128.0)
        out = degrade(clean, torch.Generator().manual_seed(0))
        assert out.shape == (2, 3, 48, 48)
        assert abs(float(out.mean()) - 128.0) < 2.0
    ''')

_README = textwrap.dedent('''\
    # {dist}

    An [IPT](https://pypi.org/project/ipt-framework/) task plugin: the task `{task}` (scale {scale}).

    ```bash
    pip install -e .            # the task appears in `ipt tasks` and `ipt plugins`
    pip install pytest && pytest  # the IPT plugin kit + task-specific tests
    ipt train --init-from MODEL_DIR --tasks {task} --max-steps 2000 --output-dir runs/{task}
    ipt eval --task {task} --model runs/{task}/model --data clean_photos/
    ipt restore --task {task} --model runs/{task}/model photo.png -o restored/
    ```

    Edit `degrade` in `{module}/__init__.py`; the guide is `docs/plugins.md` of ipt-framework.
    ''')

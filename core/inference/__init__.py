"""Restoring whole images with a trained model: :mod:`.restorer` (a model + task -> image function) over
:mod:`.tiling` (48x48 tiles, overlap blending, self-ensemble, the official ``forward_chop``)."""


def __getattr__(name: str):  # noqa: ANN202 - 0.1 compatibility: ``from ipt.core.inference import TaskRestorer``
    if name not in ("InferenceOptions", "TaskRestorer", "load_task_model", "resolve_device"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    import warnings

    warnings.warn(f"ipt.core.inference.{name} moved to ipt.core.inference.restorer", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("ipt.core.inference.restorer"), name)

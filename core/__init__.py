"""The IPT framework's library: one folder per role (model, checkpoints, images, data, training, inference,
evaluation, commands; see ``docs/architecture.md``). Import submodules directly.

The flat module names of release 0.1 (``ipt.core.resize``, ``ipt.core.metrics``, ``ipt.core.tiling``, ...) still
import for one release: each is an alias of the module in its new folder, with a ``DeprecationWarning`` naming it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old flat name -> new home (0.1 -> 0.2); ipt.core.model/data/train/config/blocks are real modules of their own
MOVED_MODULES: dict[str, str] = {
    "bench": "commands.bench", "bundled": "checkpoints.bundled", "config_cli": "commands.options",
    "convert": "checkpoints.official", "demo": "commands.demo", "ema": "training.ema",
    "evaluate": "evaluation.evaluate", "fused_linear": "model.fused_linear", "image_decode": "images.decode",
    "image_io": "images.io", "image_sources": "data.sources",
    "losses": "training.losses", "metrics": "evaluation.metrics", "pairing": "data.pairing",
    "photos": "images.photos", "pretrained": "checkpoints.pretrained", "resize": "images.resize",
    "restore": "commands.restore", "seeding": "data.seeding", "task_schedule": "data.schedule",
    "tiling": "inference.tiling", "train_config": "training.config", "transfer": "training.transfer",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec):  # noqa: ANN001, ANN201 - importlib protocol
        old = spec.name
        warnings.warn(f"{old} moved to {self.new_name}; the old name goes away in the next release",
                      DeprecationWarning, stacklevel=4)
        module = importlib.import_module(self.new_name)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:  # noqa: ANN001 - importlib protocol
        module.__spec__ = self._real_spec  # importlib set the alias spec on the real module: put its own back


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves ``ipt.core.<old flat name>`` to the module's new home (nothing else)."""

    def find_spec(self, fullname: str, path, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        prefix, _, leaf = fullname.rpartition(".")
        if prefix != __name__ or leaf not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(f"{__name__}.{MOVED_MODULES[leaf]}"))


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

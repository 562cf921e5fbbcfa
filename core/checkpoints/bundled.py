"""The pre-trained model shipped inside the package (``core/bundled_model/``; see its ``MODEL_CARD.md``).

It is the default wherever a model is optional: ``ipt restore``, ``ipt eval``, ``ipt demo`` and the transfer
experiment. :func:`resolve_model_dir` turns any ``--model`` / ``--init-from`` value (``bundled``, a folder, a Hub
repo id) into a folder.
"""

from __future__ import annotations

from pathlib import Path

from ipt.core.checkpoints.hub import hub_model_dir, parse_hub_ref
from ipt.core.checkpoints.pretrained import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled_model"
BUNDLED_NAME = "bundled"  # accepted wherever a model directory is expected


def bundled_model_dir() -> Path:
    """The folder of the bundled model (``config.json`` + ``model.safetensors``)."""
    if not (BUNDLED_DIR / CONFIG_NAME).is_file() or not (BUNDLED_DIR / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"no bundled model in {BUNDLED_DIR}: this installation ships without weights; pass --model MODEL_DIR"
        )
    return BUNDLED_DIR


def resolve_model_dir(model: str | Path | None) -> Path:
    """``model`` as a directory: ``None`` or ``"bundled"`` mean the bundled model; an existing path is itself; a
    Hub repo id ``user/name[@revision]`` is downloaded to (or found in) the Hugging Face cache
    (:func:`ipt.core.checkpoints.hub.hub_model_dir`; raises its :class:`~ipt.core.checkpoints.hub.HubError`)."""
    if model is None or str(model) == BUNDLED_NAME:
        return bundled_model_dir()
    path = Path(model)
    if path.exists() or parse_hub_ref(str(model)) is None:
        return path
    return hub_model_dir(str(model))

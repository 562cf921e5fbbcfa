"""Training batches: image sources (``datasets``) -> crops -> ``TaskSpec.degrade`` -> one batch per step.

Every piece of "how a batch is made" lives in this folder: :mod:`.sources` (where images come from),
:mod:`.batches` (crops, degradation, batches), :mod:`.schedule` (which task trains at which step) and
:mod:`.seeding` (the per-step random streams). ``from ipt.core.data import TrainBatches`` keeps working.
"""

from ipt.core.data.batches import (
    SCAN_LIMIT,
    ImageSource,
    StreamingTrainBatches,
    TaskData,
    TrainBatches,
    UnreadableImage,
    decode_record,
    load_images,
    to_rgb_tensor,
    validation_pairs,
)

__all__ = [
    "ImageSource", "load_images", "to_rgb_tensor", "decode_record", "UnreadableImage",
    "SCAN_LIMIT", "TaskData", "TrainBatches", "StreamingTrainBatches", "validation_pairs",
]

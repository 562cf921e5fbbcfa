"""Training batches: image sources (``datasets``) -> crops -> ``TaskSpec.degrade`` -> one batch per step.

Every piece of "how a batch is made" lives in this folder: :mod:`.sources` (where images come from),
:mod:`.pairing` (stored input/target pairs found by the dataset-layout plugins, shared with ``ipt eval``),
:mod:`.training_data` (each task's data from the training options), :mod:`.pools` (decoded images and pairs),
:mod:`.crops` (aligned crops, symmetries, colour augmentation), :mod:`.batches` (one batch per step),
:mod:`.schedule` (which task trains at which step), :mod:`.seeding` (the per-step random streams) and
:mod:`.throughput` (``ipt bench --what data``). ``from ipt.core.data import TrainBatches`` keeps working.
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

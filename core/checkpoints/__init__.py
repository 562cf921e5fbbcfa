"""Weights on disk: our model directories (``config.json`` + ``model.safetensors``), the bundled model, and the
official Pretrained-IPT ``.pt`` layout (both directions, in :mod:`ipt.core.checkpoints.official`)."""

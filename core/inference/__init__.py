"""Restoring whole images with a trained model: :mod:`.restorer` (a model + task -> image function) over
:mod:`.tiling` (48x48 tiles, overlap blending, self-ensemble, the official ``forward_chop``)."""

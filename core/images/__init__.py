"""Pixels: image files <-> float tensors ``(3, H, W)`` on 0-255, MATLAB-compatible resizing, the built-in photos.
No model, no training."""

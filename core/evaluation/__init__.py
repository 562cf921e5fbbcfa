"""Scoring: metrics on 8-bit outputs (PSNR/SSIM on Y, paper conventions), finding degraded/clean pairs in a
benchmark folder, and evaluating a model on them."""

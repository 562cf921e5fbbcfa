"""Transfer of a pre-trained IPT to unseen noise levels (paper §4.4, Table 4) -- the same as ``ipt transfer``.

    python examples/transfer_noise_levels.py --steps 50                       # the bundled model
    python examples/transfer_noise_levels.py --model runs/ipt/model --steps 200 --out runs/transfer

Scores denoising at sigma = 10, 30, 50, 70 for the noisy input, zero-shot (head/tail/embedding of the nearest
pre-trained level: 10 <- denoise30, 70 <- denoise50) and after fine-tuning ``--steps`` steps at each unseen level;
prints a Table-4-style markdown table and writes OUT/transfer.md, transfer.json and transfer.png (PSNR vs sigma).
``--help`` lists every option; in Python, call :func:`ipt.core.transfer.run_transfer`.
"""

from __future__ import annotations

import sys

from ipt.cli import main

if __name__ == "__main__":
    sys.exit(main(["transfer", *sys.argv[1:]]))

"""``ipt transfer`` (= ``examples/transfer_noise_levels.py``): the paper's Table 4 experiment from the command line."""

from __future__ import annotations

import argparse

from ipt.core.commands.options import add_model_arguments, parse_config
from ipt.core.inference.restorer import InferenceOptions
from ipt.core.training.transfer import TransferConfig, format_table, transfer


# -- command line ----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ipt transfer``: one per :class:`TransferConfig` field, plus the inference (tiling/device) flags."""

    parser.description = (
        "Transfer experiment of the paper (§4.4, Table 4): score a denoising model at noise levels it was not "
        "trained on, zero-shot (head/tail/embedding of the nearest trained level) and after brief fine-tuning; "
        "writes transfer.md, transfer.json and transfer.png to --out."
    )
    add_model_arguments(parser, TransferConfig)
    add_model_arguments(parser, InferenceOptions, config_flag=False)


def run(args: argparse.Namespace) -> int:

    cfg = parse_config(TransferConfig, args)
    # --config FILE.yaml holds TransferConfig keys only: the inference options come from their flags
    flags = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "config"})
    options = parse_config(InferenceOptions, flags)
    result = transfer(cfg, options)
    print(format_table(result, show_ssim=cfg.show_ssim))
    print(f"\nwrote {cfg.out / 'transfer.md'}, {cfg.out / 'transfer.json'}, {cfg.out / 'transfer.png'} "
          f"({result.seconds:.0f} s)")
    return 0

"""``ipt push MODEL_DIR user/name``: upload a model directory to the Hugging Face Hub with a generated model card.

The card (``README.md``) carries the Hub's metadata (library, tags, pipeline, datasets, metrics) and the means of
``ipt eval --json`` results given with ``--eval`` or saved as ``MODEL_DIR/eval*.json``
(:func:`ipt.core.checkpoints.hub.push_model`). Log in first (``hf auth login``) or set ``HF_TOKEN``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ipt.core.checkpoints.hub import model_card, push_model, read_eval_results
from ipt.core.files import atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, metavar="MODEL_DIR", help="model directory to upload")
    parser.add_argument("repo_id", metavar="USER/NAME", help="Hub repository (created when missing)")
    parser.add_argument("--eval", action="append", default=[], type=Path, metavar="RESULT.json",
                        help="an 'ipt eval --json' result to put on the card (repeatable)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--card-only", type=Path, default=None, metavar="README.md",
                        help="write the model card to this file and upload nothing")


def run(args: argparse.Namespace) -> int:
    if args.card_only is not None:
        evals = read_eval_results([*sorted(args.model_dir.glob("eval*.json")), *args.eval])
        path = atomic_write_text(args.card_only, model_card(args.model_dir, args.repo_id, evals))
        print(f"wrote {path} (model card for {args.repo_id}; nothing uploaded)")
        return 0
    url = push_model(args.model_dir, args.repo_id, private=args.private, eval_files=args.eval,
                     commit_message=args.message)
    print(f"uploaded {args.model_dir} to https://huggingface.co/{args.repo_id} ({url})")
    return 0

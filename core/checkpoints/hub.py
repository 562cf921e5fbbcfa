"""Model directories on the Hugging Face Hub: ``--model user/name[@revision]`` and ``ipt push``.

Downloads go through ``huggingface_hub.snapshot_download`` (its cache, ``HF_HOME``/``HF_HUB_CACHE``, revision
pinning by branch, tag or commit, ``HF_HUB_OFFLINE=1`` = cache only); uploads through ``HfApi.create_repo`` +
``HfApi.upload_folder``, with a generated model card (``README.md``: the Hub's YAML metadata, then a text body).
Every failure (no such repository or revision, no network, not cached, not an IPT model) is one
:class:`HubError` line naming the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from ipt.core.checkpoints.pretrained import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_config

# user/name (the Hub's repo id grammar: letters, digits, "-", "_", "."), then an optional @revision
_HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]+))?$")
MODEL_FILES = [CONFIG_NAME, WEIGHTS_NAME, "*.md", "*.json"]  # what a download fetches from a model repository
LIBRARY_NAME = "ipt-framework"
EVAL_GLOB = "eval*.json"  # `ipt eval --json > MODEL_DIR/eval-sr2-set5.json` puts results on the model card
_TASK_TAGS = {"sr": "super-resolution", "denoise": "image-denoising", "derain": "image-deraining",
              "deblur": "image-deblurring"}


class HubError(CheckpointError):
    """A Hub repository that cannot be downloaded or uploaded (the message says why, in one line)."""


def parse_hub_ref(text: str) -> tuple[str, str | None] | None:
    """``"user/name@v1"`` -> ``("user/name", "v1")``; None when ``text`` is not a Hub repo id."""
    match = _HUB_REF.match(str(text))
    if match is None or ".." in match.group("repo"):
        return None
    return match.group("repo"), match.group("revision")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def hub_model_dir(ref: str, cache_dir: str | Path | None = None) -> Path:
    """The local folder of the Hub model ``user/name[@revision]``: downloaded into the Hub cache, or found there.

    With ``HF_HUB_OFFLINE=1`` only the cache is read. Raises :class:`HubError` (one line) when the repository or
    revision does not exist, the Hub is unreachable and nothing is cached, or the snapshot has no ``config.json``.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    parsed = parse_hub_ref(ref)
    if parsed is None:
        raise HubError(f"{ref}: not a Hub repo id (user/name or user/name@revision)")
    repo, revision = parsed
    where = f"{repo}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=MODEL_FILES,
                                   local_files_only=_offline())
    except RevisionNotFoundError as exc:
        raise HubError(f"{repo}: the Hub repository has no revision {revision!r}") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"{ref}: neither a local folder nor a model repository on the Hugging Face Hub "
                       "(or it is private: log in with 'hf auth login')") from exc
    except LocalEntryNotFoundError as exc:
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub cannot be reached"
        raise HubError(f"{ref}: not a local folder, and {where} is not in the Hub cache while {why}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"{ref}: cannot download {where} from the Hub: {str(exc).splitlines()[0]}") from exc
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise HubError(f"{where}: not an IPT model repository (no {CONFIG_NAME}; was it uploaded with 'ipt push'?)")
    return folder


# -- upload --------------------------------------------------------------------------------------------------


def read_eval_results(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The ``ipt eval --json`` objects in ``paths`` (files that are not one are named in a :class:`HubError`)."""
    results = []
    for path in paths:
        try:
            obj = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HubError(f"{path}: cannot read the evaluation result ({exc})") from exc
        if not isinstance(obj, dict) or not {"task", "psnr_y", "ssim_y", "n"} <= set(obj):
            raise HubError(f"{path}: not an 'ipt eval --json' result (needs task, psnr_y, ssim_y, n)")
        results.append(obj)
    return results


def model_card(model_dir: str | Path, repo_id: str, evals: list[dict[str, Any]] | None = None) -> str:
    """The ``README.md`` of a model repository: Hub metadata (library, tags, pipeline, datasets, metrics with the
    values of ``evals``, ``ipt eval --json`` results) and a body saying what the model is and how to run it."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = read_config(model_dir)
    tasks = [t.name for t in cfg.tasks]
    plugins = [t.plugin or t.name for t in cfg.tasks]
    training = (getattr(cfg, "training", None) or {}).get("config", {})
    data = training.get("data")
    datasets = [data] if isinstance(data, str) and parse_hub_ref(data) and not Path(data).exists() else None
    results = [
        EvalResult(task_type="image-to-image", task_name=e["task"], dataset_type=_dataset_name(e),
                   dataset_name=_dataset_name(e), metric_type=metric, metric_name=name, metric_value=round(e[key], 4))
        for e in evals or []
        for metric, name, key in (("psnr", "PSNR-Y (dB)", "psnr_y"), ("ssim", "SSIM-Y", "ssim_y"))
    ]
    data_card = ModelCardData(
        library_name=LIBRARY_NAME, pipeline_tag="image-to-image", license="apache-2.0", datasets=datasets,
        metrics=["psnr", "ssim"], model_name=repo_id.split("/")[-1], eval_results=results or None,
        tags=["image-restoration", "ipt", "transformer", "safetensors",
              *dict.fromkeys(_TASK_TAGS.get(p, p) for p in plugins)],
    )
    body = _card_body(repo_id, cfg, tasks, training, evals or [])
    return str(ModelCard.from_template(data_card, template_str="---\n{{ card_data }}\n---\n\n" + body))


def _dataset_name(result: dict[str, Any]) -> str:
    return Path(str(result.get("data") or "unknown")).name


def _card_body(repo_id: str, cfg: Any, tasks: list[str], training: dict[str, Any], evals: list[dict]) -> str:
    arch = cfg.architecture
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"An Image Processing Transformer (IPT, Chen et al., CVPR 2021) trained with `{LIBRARY_NAME}`: tasks "
        + ", ".join(f"`{t}`" for t in tasks) + ".",
        "",
        f"Architecture: {arch.n_feats} feature channels, {arch.patch_dim}x{arch.patch_dim} patches of a "
        f"{arch.patch_size}x{arch.patch_size} tile, {arch.num_heads} heads, {arch.num_enc_layers} encoder + "
        f"{arch.num_dec_layers} decoder layers.",
    ]
    if training:
        lines += ["", f"Training: preset `{training.get('preset')}`, data `{training.get('data') or 'built-in photos'}`"
                  f", {training.get('max_steps')} steps, batch {training.get('batch_size')}."]
    if evals:
        lines += ["", "| task | data | images | PSNR-Y (dB) | SSIM-Y |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {e['task']} | {_dataset_name(e)} | {e['n']} | {e['psnr_y']:.2f} | {e['ssim_y']:.4f} |"
                  for e in evals]
    lines += ["", "## Use", "", "```bash", f"pip install {LIBRARY_NAME}",
              f"ipt restore --model {repo_id} --task {tasks[0]} photo.png -o restored/", "```", ""]
    return "\n".join(lines)


def push_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    eval_files: Iterable[str | Path] = (),
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload ``model_dir`` (``config.json``, ``model.safetensors``) with a generated ``README.md`` to ``repo_id``.

    ``eval_files`` (and ``eval*.json`` files in ``model_dir``) are ``ipt eval --json`` results whose means become
    the card's metrics. The repository is created when missing. Returns the commit URL. Raises :class:`HubError`
    (one line) when the Hub refuses or cannot be reached; the model directory is never modified.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = Path(model_dir)
    read_config(model_dir)
    if parse_hub_ref(repo_id) is None or "@" in repo_id:
        raise HubError(f"{repo_id}: not a Hub repo id (user/name)")
    evals = read_eval_results([*sorted(model_dir.glob(EVAL_GLOB)), *eval_files])
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ipt-push-") as tmp:
        staging = _stage(model_dir, Path(tmp), model_card(model_dir, repo_id, evals))
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(folder_path=str(staging), repo_id=repo_id, repo_type="model",
                                     commit_message=commit_message or f"Upload {model_dir.name} with ipt push")
        except HfHubHTTPError as exc:
            raise HubError(f"{repo_id}: the Hub refused the upload: {str(exc).splitlines()[0]}") from exc
        except Exception as exc:  # noqa: BLE001 - connection errors of the HTTP client, a missing token (OSError)
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise HubError(f"{repo_id}: cannot upload to the Hugging Face Hub ({type(exc).__name__}: {detail})") from exc
    return str(getattr(info, "commit_url", info))


def _stage(model_dir: Path, tmp: Path, card: str) -> Path:
    """A folder holding the model files (hard links where possible, else copies) and the card."""
    staging = tmp / model_dir.name
    staging.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        src, dst = model_dir / name, staging / name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    (staging / "README.md").write_text(card, encoding="utf-8")
    return staging

"""Hugging Face Hub: ``--model`` / ``--init-from user/name[@revision]`` from the Hub cache (offline, revision
pinning), and ``ipt push`` up to the API call (the files and the model card it would send; clear one-line errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from hub_cache import populate_hub_cache
from ipt.cli import main
from ipt.core.checkpoints.bundled import resolve_model_dir
from ipt.core.checkpoints.hub import HubError, hub_model_dir, model_card, parse_hub_ref
from ipt.core.images.io import write_image
from ipt.core.model import IPT, build_model

REPO = "someone/ipt-tiny-sr"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A cache with two commits of REPO: v1 (tag) and main (later weights); offline mode on."""
    cache = tmp_path / "hub"
    commits = {}
    for name, seed, revisions in (("v1", 1, ("v1",)), ("main", 2, ("main",))):
        torch.manual_seed(seed)
        folder = build_model("tiny", ["sr2", "denoise30"]).save_pretrained(tmp_path / "src" / name)
        commits[name] = populate_hub_cache(cache, REPO, folder, revisions)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"cache": cache, "commits": commits, "src": tmp_path / "src"}


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = IPT.from_pretrained(a).state_dict(), IPT.from_pretrained(b).state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hub_refs_are_parsed() -> None:
    assert parse_hub_ref("user/ipt-small_sr.v2") == ("user/ipt-small_sr.v2", None)
    assert parse_hub_ref("user/name@v1.0") == ("user/name", "v1.0")
    assert parse_hub_ref("user/name@refs/pr/3") == ("user/name", "refs/pr/3")
    for not_hub in ("name", "./user/name", "/abs/path", "a/b/c", "user/../x", "user/name@", "bundled"):
        assert parse_hub_ref(not_hub) is None, not_hub


def test_offline_cache_gives_the_pinned_revision(hub_cache: dict) -> None:
    main_dir = resolve_model_dir(REPO)
    assert main_dir.name == hub_cache["commits"]["main"] and main_dir.parent.name == "snapshots"
    assert _same_weights(main_dir, hub_cache["src"] / "main")
    tagged = resolve_model_dir(f"{REPO}@v1")
    assert _same_weights(tagged, hub_cache["src"] / "v1") and not _same_weights(tagged, main_dir)
    by_commit = resolve_model_dir(f"{REPO}@{hub_cache['commits']['v1']}")
    assert by_commit == tagged


def test_local_folders_win_over_hub_ids(hub_cache: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    local = build_model("tiny", ["sr2"]).save_pretrained(tmp_path / "someone" / "ipt-tiny-sr")
    assert resolve_model_dir(REPO).resolve() == local.resolve()


def test_missing_revision_or_repo_offline_is_one_line(hub_cache: dict, capsys: pytest.CaptureFixture,
                                                      tmp_path: Path) -> None:
    with pytest.raises(HubError, match=r"at revision 'v9' is not in the Hub cache while HF_HUB_OFFLINE is set"):
        hub_model_dir(f"{REPO}@v9")
    write_image(tmp_path / "in.png", torch.zeros(3, 8, 8))
    assert main(["restore", str(tmp_path / "in.png"), "-o", str(tmp_path / "o"), "--task", "sr2",
                 "--model", "nobody/nothing", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nobody/nothing: not a local folder, and nobody/nothing is not in the Hub cache" in err


def test_repository_not_found_online_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/x/y"))

    def not_found(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)

    monkeypatch.setattr(HfApi, "repo_info", not_found)
    with pytest.raises(HubError, match=r"x/y: neither a local folder nor a model repository on the Hugging Face Hub"):
        hub_model_dir("x/y", cache_dir=tmp_path)

    def no_revision(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RevisionNotFoundError("404 Client Error: Revision Not Found", response=response)

    monkeypatch.setattr(HfApi, "repo_info", no_revision)
    with pytest.raises(HubError, match=r"x/y: the Hub repository has no revision 'v7'"):
        hub_model_dir("x/y@v7", cache_dir=tmp_path)


def test_init_from_a_hub_id_fine_tunes_from_the_snapshot(hub_cache: dict) -> None:
    from ipt.core.training.config import TrainConfig
    from ipt.core.training.run import init_model

    cfg = TrainConfig(tasks=["sr2", "derain"], init_from=f"{REPO}@v1", max_steps=1)
    assert cfg.init_dir.name == hub_cache["commits"]["v1"]
    model, notes = init_model(cfg)
    v1 = IPT.from_pretrained(hub_cache["src"] / "v1")
    assert torch.equal(model.heads["sr2"][0].weight, v1.heads["sr2"][0].weight)
    assert "kept sr2" in notes[0] and "new derain" in notes[0]


def test_cli_restore_from_the_hub_cache_with_hf_hub_offline(hub_cache: dict, tmp_path: Path) -> None:
    """The command a user runs, in a fresh process: the environment variables alone select the cache and offline."""
    write_image(tmp_path / "in.png", torch.rand(3, 20, 30) * 255)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache["cache"])}
    proc = subprocess.run([sys.executable, "-m", "ipt.cli", "restore", str(tmp_path / "in.png"), "--task", "sr2",
                           "--model", f"{REPO}@v1", "-o", str(tmp_path / "out"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "in.png").is_file()


# -- ipt push ----------------------------------------------------------------------------------------------------


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """HfApi.create_repo/upload_folder replaced by recorders (the files are read while the call runs)."""
    from huggingface_hub import HfApi

    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append({"create_repo": repo_id, **kwargs})

    def upload_folder(self, *, folder_path, repo_id, **kwargs):  # noqa: ANN001, ANN003, ANN202
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        calls.append({"upload_folder": repo_id, "files": files, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/abc"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_sends_the_model_and_a_card_with_metadata_and_metrics(model_dir: Path, tmp_path: Path,
                                                                    uploads: list[dict],
                                                                    capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub import ModelCard

    result = {"task": "sr2", "n": 5, "psnr_y": 33.8312, "ssim_y": 0.94127, "psnr_rgb": 31.0, "data": "/data/Set5",
              "protocol": "paper", "tiles": 10, "seconds": 1.0}
    (tmp_path / "sr2-set5.json").write_text(json.dumps(result))
    before = sorted(p.name for p in model_dir.iterdir())
    assert main(["push", str(model_dir), "me/ipt-test", "--eval", str(tmp_path / "sr2-set5.json"), "--private"]) == 0
    assert "https://huggingface.co/me/ipt-test/commit/abc" in capsys.readouterr().out
    create, upload = uploads
    assert create["create_repo"] == "me/ipt-test" and create["private"] is True and create["exist_ok"] is True
    assert set(upload["files"]) == {"config.json", "model.safetensors", "README.md"}
    assert upload["files"]["model.safetensors"] == (model_dir / "model.safetensors").read_bytes()
    card = ModelCard(upload["files"]["README.md"].decode())
    data = card.data.to_dict()
    assert data["library_name"] == "ipt-framework" and data["pipeline_tag"] == "image-to-image"
    assert {"super-resolution", "image-denoising", "image-restoration"} <= set(data["tags"])
    metrics = {r.metric_type: (r.metric_value, r.dataset_name, r.task_name) for r in card.data.eval_results}
    assert metrics == {"psnr": (33.8312, "Set5", "sr2"), "ssim": (0.9413, "Set5", "sr2")}
    assert "| sr2 | Set5 | 5 | 33.83 | 0.9413 |" in card.text
    assert "ipt restore --model me/ipt-test" in card.text
    assert sorted(p.name for p in model_dir.iterdir()) == before  # the model directory is not touched


def test_card_without_evaluation_has_no_metric_values(model_dir: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard(model_card(model_dir, "me/x"))
    assert card.data.eval_results is None and card.data.metrics == ["psnr", "ssim"]


def test_push_errors_are_one_line(model_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    response = httpx2.Response(404, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))

    def refuse(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found for url ...\nmore", response=response)

    def offline(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")

    for fake, expect in ((refuse, "me/x: the Hub refused the upload: 404 Client Error"),
                         (offline, "me/x: cannot upload to the Hugging Face Hub (ConnectError: [Errno -3]")):
        monkeypatch.setattr(HfApi, "create_repo", fake)
        assert main(["push", str(model_dir), "me/x"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expect in err, err
    assert main(["push", str(model_dir), "not-a-repo-id"]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["push", str(model_dir), "me/x", "--eval", str(tmp_path / "bad.json")]) == 2
    assert "not an 'ipt eval --json' result" in capsys.readouterr().err

"""A Hugging Face Hub cache written with huggingface_hub's own cache helpers, for offline tests.

``snapshot_download(local_files_only=True)`` (and ``HF_HUB_OFFLINE=1``) reads ``<cache>/models--user--name/``:
``refs/<branch or tag>`` (a commit hash), ``snapshots/<commit>/<file>`` (symlinks to ``blobs/<etag>``) and the tree
listing ``trees/<commit>.json``. The library writes these with :func:`repo_folder_name`, :func:`_create_symlink`,
:func:`_cache_commit_hash_for_specific_revision` and :func:`write_tree_cache` after a download; we call the same
functions with files from a local folder instead of the network.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def populate_hub_cache(cache_dir: Path, repo_id: str, folder: Path, revisions: tuple[str, ...] = ("main",)) -> str:
    """Put the files of ``folder`` in the cache as one commit of ``repo_id``, reachable by ``revisions``.

    Returns the commit hash (a digest of the files, so different contents give different commits).
    """
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    from huggingface_hub.file_download import (
        _cache_commit_hash_for_specific_revision,
        _create_symlink,
        repo_folder_name,
    )

    storage = Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model")
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    commit = hashlib.sha1(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()
    entries = {}
    for path in files:
        data = path.read_bytes()
        lfs = path.suffix == ".safetensors"  # the Hub stores weights in LFS: blob named by sha256
        sha256 = hashlib.sha256(data).hexdigest()
        blob = storage / "blobs" / (sha256 if lfs else git_blob_sha1(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        pointer = storage / "snapshots" / commit / path.name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(blob), str(pointer), new_blob=False)
        entries[path.name] = TreeCacheEntry(size=len(data), blob_id=git_blob_sha1(data),
                                            lfs_sha256=sha256 if lfs else None, lfs_size=len(data) if lfs else None)
    write_tree_cache(str(storage), commit, entries)
    for revision in revisions:
        _cache_commit_hash_for_specific_revision(str(storage), revision, commit)
    return commit

"""Atomic writes: a reader (or a crash) never sees half a file or half a folder.

The one place the project writes files atomically: write to a temporary name in the target's folder, then
``os.replace`` it over the target (atomic on POSIX within one filesystem). Temporary names start with ``.`` and
are removed when the write fails, interrupts included. New files and folders get the permissions the user's umask
gives (``tempfile`` creates them 0600/0700, which another user could not read).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_file(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file beside ``path``, then rename it to ``path``.

    Raises whatever ``write`` raises (the temporary file is removed first); the old ``path``, if any, is untouched
    until the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write_file(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_dir(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_dir)`` to fill a temporary folder beside ``target``, then rename it to ``target``.

    An existing ``target`` is first renamed aside and deleted only after the new folder is in place, so at every
    moment either the old or the new folder exists under ``target``'s name (or, for a crash between the two renames,
    the old one under ``.NAME.old-PID``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        commit_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def commit_dir(tmp: str | Path, target: str | Path) -> Path:
    """Put the complete folder ``tmp`` in place as ``target`` (same filesystem), as :func:`atomic_write_dir` does.

    For folders several processes fill together (a distributed checkpoint), where the temporary name must be known
    to all of them. Everything inside ``tmp`` gets the umask's permissions first (``tempfile`` and safetensors
    create 0700/0600, which another user could not read). An existing ``target`` is renamed aside and deleted after
    the rename, never deleted in place.
    """
    tmp, target = Path(tmp), Path(target)
    mask = _umask()
    for root, dirs, files in os.walk(tmp):
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
    os.chmod(tmp, 0o777 & ~mask)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)  # left by a crash of an earlier commit of this process id
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target

"""Atomic writes: a reader (or a crash) never sees half a file or half a folder.

The one place the project writes files atomically: write to a temporary name in the target's folder, then
``os.replace`` it over the target (atomic on POSIX within one filesystem). Temporary names start with ``.`` and
are removed when the write fails, interrupts included. New files and folders get the permissions the user's umask
gives (``tempfile`` creates them 0600/0700, which another user could not read).

:func:`check_not_inputs` is the one check every command runs before writing: no output may replace, or be
written into, a file or folder the user gave it to read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
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


# -- never write over an input --------------------------------------------------------------------------------
class OverwriteError(ValueError):
    """A command output that would replace or sit inside one of the command's inputs; ``str()`` names both."""


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_not_inputs(
    inputs: Iterable[str | Path],
    option: str,
    writes: Iterable[str | Path] = (),
    replaces: Iterable[str | Path] = (),
    hint: str = "choose another path",
) -> None:
    """Refuse outputs that would overwrite, fill or delete something the command reads.

    ``inputs`` are the files and folders a command reads (images, a benchmark folder, a model directory, a
    checkpoint file). ``writes`` are files it writes and folders it writes into: each must not be an input nor lie
    inside an input folder. ``replaces`` are folders it replaces or prunes as a whole (a model directory, a
    checkpoints folder): they must not hold an input either. Paths are compared resolved (relative paths, ``..``,
    symbolic links) and, for existing files, by identity (hard links). Raises :class:`OverwriteError` with one
    line naming the output, the input, ``option`` (the flag that chose the output) and ``hint``; writes nothing.
    """
    by_path: dict[Path, Path] = {}
    by_id: dict[tuple[int, int], Path] = {}
    for given in map(Path, inputs):
        by_path.setdefault(given.resolve(), given)
        file_id = _file_id(given)
        if file_id is not None:
            by_id.setdefault(file_id, given)
    for out, whole in [(Path(o), False) for o in writes] + [(Path(o), True) for o in replaces]:
        resolved = out.resolve()
        found, relation = by_path.get(resolved) or by_id.get(_file_id(out) or (-1, -1)), "is the input"
        if found is None:
            found = next((by_path[p] for p in resolved.parents if p in by_path), None)
            relation = "is inside the input"
        if found is None and whole:
            found = next((g for r, g in by_path.items() if resolved in r.parents), None)
            relation = "would replace a folder holding the input"
        if found is not None:
            raise OverwriteError(f"{option} {out}: refusing to write over an input ({out} {relation} {found}); {hint}")


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

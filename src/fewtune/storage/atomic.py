"""Writing files and folders so a reader (or a crash) never sees half of one.

A file (a report, a benchmark record) is written to a unique hidden sibling, flushed, then
renamed over the target: :func:`write_text`. A saved model is a folder, replaced as follows.


A save writes the new folder as a hidden sibling, then swaps the two with
``renameat2(RENAME_EXCHANGE)``: one system call, so at every instant ``NAME`` is the whole old
folder or the whole new one, wherever the process is killed; the old one, now under the hidden
name, is deleted after. Chosen over versioned subfolders behind a pointer file because the
layout stays the one every fewtune version writes and reads: older fewtune, ``info`` and scripts
that open ``NAME.fewtune/config.json`` keep working, with no format change. Where the kernel or
filesystem lacks RENAME_EXCHANGE (not Linux, some network filesystems) the fallback is two
renames, ``NAME`` -> ``.NAME.<uuid>.old`` then staging -> ``NAME``; killed between them there is
no ``NAME``, so readers use that retired copy (:func:`retired`: the previous folder, complete)
and the next save puts it back first (:func:`restore_retired`). The caller holds the model's
lock, so the leftovers of killed saves can be deleted at the next save. The new folder keeps the
old one's permissions, or the umask's for a new model, so a model shared with other users stays
readable.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

USE_EXCHANGE = True  # tests set False to exercise the two-rename fallback
_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def write_text(path: Path, text: str) -> Path:
    """Write ``path`` whole or not at all; concurrent writers each leave a complete file (the last wins)."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> Path:
    """:func:`write_text` for bytes."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(staging, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def put_in_place(staging: Path, path: Path, checkpoint: Callable[[str], None]) -> None:
    """Make the complete folder ``staging`` be ``path``; afterwards ``staging`` holds the old
    folder or nothing (the caller deletes it). ``checkpoint`` is called after each step."""
    if not path.exists():
        os.rename(staging, path)
        checkpoint("renamed")
    elif exchange(staging, path):
        checkpoint("exchanged")
    else:
        old = path.with_name(f".{path.name}.{os.urandom(16).hex()}.old")
        os.rename(path, old)
        checkpoint("retired")
        try:
            os.rename(staging, path)
        except BaseException:
            os.rename(old, path)
            raise
        checkpoint("renamed")
        shutil.rmtree(old, ignore_errors=True)


def _leftover(path: Path) -> re.Pattern[str]:
    """Hidden siblings a killed save may leave: ``.NAME.<uuid|pid|mkdtemp>.partial|old``."""
    return re.compile(rf"\.{re.escape(path.name)}\.(?:[0-9a-f]{{32}}|\d+|[a-z0-9_]{{8}})\.(?:partial|old)")


def retired(path: Path) -> list[Path]:
    """Complete retired copies of ``path`` (``*.old`` with a config.json), newest first."""
    if not path.parent.is_dir():
        return []
    pattern = _leftover(path)
    found = [
        p
        for p in path.parent.iterdir()
        if p.name.endswith(".old") and pattern.fullmatch(p.name) and (p / "config.json").is_file()
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def restore_retired(path: Path) -> None:
    """Put back the copy a save killed between its fallback renames retired (lock held)."""
    if not path.exists() and not path.is_symlink() and (found := retired(path)):
        os.rename(found[0], path)


def remove_leftovers(path: Path) -> None:
    """Delete what killed saves of ``path`` left (lock held, so none of them is running)."""
    pattern = _leftover(path)
    for leftover in path.parent.iterdir():
        if pattern.fullmatch(leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)


def keep_modes(previous: Path, staging: Path) -> None:
    """Give the new folder and files the permissions of the ones they replace, or the umask's
    for a new model (safetensors creates its files 0600 whatever the umask)."""
    try:
        folder_mode = previous.stat().st_mode & 0o7777
        file_mode = (previous / "config.json").stat().st_mode & 0o7777
    except OSError:
        folder_mode, file_mode = 0o777 & ~_umask(), 0o666 & ~_umask()
    for file in staging.iterdir():
        os.chmod(file, file_mode)
    os.chmod(staging, folder_mode)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it too)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def exchange(new: Path, old: Path) -> bool:
    """Swap two folders in one step; False where the system can't (then the caller falls back)."""
    if not USE_EXCHANGE or _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(old), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(old))


def _find_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, or another libc without it
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_renameat2 = _find_renameat2()


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

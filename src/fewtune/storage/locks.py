"""One writer per saved model: an advisory lock file beside the model folder.

``fewtune add``, ``fewtune remove``, ``fewtune train`` and the server's saves all read, change and
write ``NAME.fewtune``; without a lock two of them at once each start from the same old model
and the last to save silently drops the other's change. The lock is ``flock`` on
``.NAME.fewtune.lock`` in the same folder (never inside the model folder, which a save replaces
whole). The kernel releases it when its holder exits, however it exits, so a crash leaves no
stale lock; the file itself stays (deleting a lock file races with a process about to lock it).
A second writer waits, says so once, and gives up with a one-line error after a bounded time.
Readers (``load``, ``info``, ``predict``) take no lock: a save replaces the folder in one step.

The lock is re-entrant per thread, so ``with model_lock(p): ... classifier.save(p)`` works:
:meth:`Classifier.save` takes the lock itself, for callers that only save.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fewtune.errors import FewtuneError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: threads of one process are still serialised
    fcntl = None  # type: ignore[assignment]

DEFAULT_TIMEOUT_S = 120.0  # `fewtune add` of a few hundred images holds it for about this long on a slow CPU
_held = threading.local()  # key -> depth, for re-entrance within a thread
_in_process = threading.Lock()  # without fcntl: serialise the threads of this process at least


def lock_path(model: str | Path) -> Path:
    """``.NAME.lock`` beside ``NAME``."""
    model = Path(os.path.abspath(model))
    return model.with_name(f".{model.name}.lock")


def lock_timeout() -> float:
    """Seconds a writer waits for another: ``FEWTUNE_LOCK_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`."""
    try:
        value = float(os.environ.get("FEWTUNE_LOCK_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise FewtuneError("FEWTUNE_LOCK_TIMEOUT must be a number of seconds, e.g. 120") from None
    return value if value >= 0 else DEFAULT_TIMEOUT_S


@contextmanager
def model_lock(
    model: str | Path, *, timeout: float | None = None, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the write lock of ``model`` (a classifier folder, existing or not).

    Args:
        timeout: seconds to wait for another holder before a :class:`FewtuneError`;
            default :func:`lock_timeout`.
        on_wait: called once with a one-line message when the lock is busy (the CLI prints it).
    """
    file = lock_path(model)
    key = str(file)
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    if fcntl is None:  # pragma: no cover
        with _in_process:
            depth[key] = 1
            try:
                yield
            finally:
                depth[key] = 0
        return
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise FewtuneError(
            f"{model}: cannot create the lock file {file} ({exc.strerror}); save to a folder you can write"
        ) from None
    try:
        _acquire(fd, model, file, lock_timeout() if timeout is None else timeout, on_wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the waiting message
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(
    fd: int, model: str | Path, file: Path, timeout: float, on_wait: Callable[[str], None] | None
) -> None:
    deadline, told = time.monotonic() + timeout, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(fd)
        if not told and on_wait is not None:
            on_wait(f"waiting for another fewtune process{holder} that is updating {model} ...")
        told = True
        if time.monotonic() >= deadline:
            raise FewtuneError(
                f"{model}: another fewtune process{holder} has been updating it for over {timeout:g} s; "
                f"wait for it to finish and retry, or raise FEWTUNE_LOCK_TIMEOUT"
            )
        time.sleep(0.05)


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""

"""One progress bar for every long loop, and one spinner for every phase with nothing to count:
rich, on stderr, shown only for work worth watching (> 1 s).

Titles are printed as typed (no rich markup): a status may quote a file or class name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class ProgressBar:
    """Context manager yielding ``advance(n)``; the bar appears once the work has taken a second."""

    def __init__(self, what: str, total: int, enabled: bool = True):
        self.what, self.total, self.enabled = what, total, enabled and total > 0
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> Callable[..., None]:  # advance(n=1, status=None)
        self.start = time.monotonic()
        self.done, self.status = 0, ""
        return self.advance

    def advance(self, n: int = 1, status: str | None = None) -> None:
        """Count ``n`` more done; ``status`` (e.g. the current loss) is shown after the title."""
        self.done += n
        if status is not None:
            self.status = status
        if not self.enabled:
            return
        if self.bar is None and time.monotonic() - self.start > 1.0 and self.done < self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self._title(), total=self.total, completed=self.done)
        elif self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=self.done, description=self._title())

    def _title(self) -> str:
        return f"{self.what} {self.status}".strip()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


class Status:
    """Context manager for a phase with nothing to count (loading a network, fitting a head): a
    spinner with ``what`` on stderr, shown only once the phase has taken a second."""

    def __init__(self, what: str, enabled: bool = True):
        self.what, self.enabled, self.lock = what, enabled, threading.Lock()
        #: the spinner once shown; False once the phase is over (a timer firing late shows nothing)
        self.live: Any = None

    def __enter__(self) -> Status:
        if self.enabled:
            self.timer = threading.Timer(1.0, self._show)
            self.timer.daemon = True
            self.timer.start()
        return self

    def _show(self) -> None:
        from rich.console import Console
        from rich.text import Text

        with self.lock:
            if self.live is None:
                self.live = Console(stderr=True).status(Text(self.what))  # Text: never read as markup
                self.live.start()

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self.timer.cancel()
        with self.lock:
            if self.live is not None:
                self.live.stop()
            self.live = False  # a timer that fires late shows nothing

"""One progress bar for every long loop: rich, on stderr, shown only for work worth watching (> 1 s).

Titles are printed as typed (no rich markup): a status may quote a file or class name.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ProgressBar:
    """Context manager yielding ``advance(n)``; the bar appears once the work has taken a second."""

    def __init__(self, what: str, total: int, enabled: bool = True):
        self.what, self.total, self.enabled, self.bar = what, total, enabled and total > 0, None

    def __enter__(self) -> Callable[[int], None]:
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
                TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(self._title(), total=self.total, completed=self.done)
        elif self.bar is not None:
            self.bar.update(self.task, completed=self.done, description=self._title())

    def _title(self) -> str:
        return f"{self.what} {self.status}".strip()

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

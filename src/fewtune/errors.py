"""The one exception type a user ever sees from fewtune, and the Ctrl-C that says what was kept."""

from __future__ import annotations

from typing import Any


class FewtuneError(Exception):
    """Bad input or a broken environment, with a one-line message that names the fix.

    The CLI prints the message alone (no traceback) and exits with status 2. Anything else
    that escapes is a bug in fewtune and exits with status 1.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during long work, re-raised with what it leaves behind.

    Still a :class:`KeyboardInterrupt`, so whatever stops on Ctrl-C stops on it. The message says
    what was kept (fine-tuning: where the last finished epoch was saved, for ``--resume``);
    ``rows`` holds what a benchmark measured before it, the last row possibly partial.
    """

    def __init__(self, message: str = "interrupted", rows: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.rows: list[dict[str, Any]] = rows if rows is not None else []

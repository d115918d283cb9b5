"""What a backbone's weights file amounts to, remembered so a warm run need not read the file.

Hashing the weights (tens of MB) and building the network to learn its preprocessing and
embedding size cost seconds; the feature cache needs only these three facts to answer. They are
kept in one small SQLite file beside the feature caches, keyed by the architecture and the
weights file's resolved path, size and modification time: replacing or editing the file changes
the key, so a stale entry is never used. An unusable memo is ignored (the facts are recomputed),
never fatal.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MEMO_VERSION = 1


def memo_key(timm_name: str, weights: Path) -> str:
    """Identifies one weights file as it is on disk now, for one architecture."""
    stat = weights.stat()
    return json.dumps([MEMO_VERSION, timm_name, str(weights), stat.st_size, stat.st_mtime_ns])


class WeightsMemo:
    """``key -> {"weights_sha256", "preprocessing", "dim"}`` in ``<directory>/backbones.sqlite``."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / "backbones.sqlite"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS weights (key TEXT PRIMARY KEY, facts TEXT NOT NULL)")
        return db

    def get(self, key: str) -> dict[str, Any] | None:
        """The remembered facts, or None when absent or unreadable."""
        try:
            db = self._connect()
            try:
                row = db.execute("SELECT facts FROM weights WHERE key = ?", (key,)).fetchone()
            finally:
                db.close()
            facts = json.loads(row[0]) if row else None
        except (sqlite3.Error, OSError, ValueError) as exc:
            log.warning("backbone memo %s unreadable (%s); recomputing", self.path, exc)
            return None
        if not isinstance(facts, dict) or not {"weights_sha256", "preprocessing", "dim"} <= set(facts):
            return None
        return facts

    def put(self, key: str, facts: dict[str, Any]) -> None:
        try:
            db = self._connect()
            try:
                db.execute(
                    "INSERT OR REPLACE INTO weights VALUES (?, ?)", (key, json.dumps(facts, sort_keys=True))
                )
            finally:
                db.close()
        except (sqlite3.Error, OSError) as exc:
            log.warning("backbone memo %s not written (%s)", self.path, exc)

"""On-disk cache of embeddings, so training twice on the same images does no backbone work.

One SQLite file per backbone fingerprint (architecture + weights hash + preprocessing), one row
per image keyed by the sha256 of the file's bytes: renaming or moving a file still hits, and
editing it misses. SQLite makes concurrent writers safe; an unreadable row or file is dropped and
recomputed, never fatal.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$FEWTUNE_CACHE_DIR``, else the platform's user cache folder (e.g. ``~/.cache/fewtune``)."""
    if env := os.environ.get("FEWTUNE_CACHE_DIR"):
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fewtune", appauthor=False))


class FeatureCache:
    """Embeddings of one backbone, stored as float32 rows of a fixed size."""

    def __init__(self, directory: str | Path, fingerprint: str, dim: int):
        self.path = Path(directory) / f"features-{fingerprint[:24]}.sqlite"
        self.dim = dim
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except (sqlite3.DatabaseError, OSError) as exc:
            self._recover(exc)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS features (sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        db.execute("SELECT count(*) FROM features").fetchone()  # fails here if the file is garbage
        return db

    def _recover(self, exc: Exception) -> None:
        """Move a corrupt cache file aside and start afresh; with no usable folder, run uncached."""
        log.warning("feature cache %s is unusable (%s); starting a new one", self.path, exc)
        self.close()
        try:
            if self.path.exists():
                self.path.replace(self.path.with_suffix(".corrupt"))
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._open()
        except (sqlite3.DatabaseError, OSError) as again:
            log.warning("feature cache disabled: %s", again)
            self._db = None

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached rows among ``keys``; rows of the wrong size are treated as absent."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        if self._db is None:
            return found
        try:
            for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob in self._db.execute(f"SELECT sha256, vector FROM features WHERE sha256 IN ({marks})", chunk):
                    if isinstance(blob, bytes) and len(blob) == 4 * self.dim:
                        vector = np.frombuffer(blob, dtype=np.float32)
                        if np.isfinite(vector).all():
                            found[key] = vector
        except sqlite3.DatabaseError as exc:
            self._recover(exc)
            return {}
        return found

    def put_many(self, rows: dict[str, np.ndarray]) -> None:
        if self._db is None or not rows:
            return
        data = [(key, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for key, v in rows.items()]
        try:
            with self._db:  # one transaction: a crash leaves all or none of these rows
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)", data)
        except sqlite3.DatabaseError as exc:
            self._recover(exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

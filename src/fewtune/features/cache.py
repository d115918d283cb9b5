"""On-disk cache of embeddings, so training twice on the same images does no backbone work.

One SQLite file per backbone fingerprint (architecture + weights hash + preprocessing), one row
per image keyed by the sha256 of the file's bytes: renaming or moving a file still hits, and
editing it misses. SQLite makes concurrent writers safe; an unreadable row or file is dropped and
recomputed, never fatal.

The folder is bounded: past ``$FEWTUNE_CACHE_MAX_MB`` (default 2048 MB) in all, the rows used
least recently are dropped, so a cache can't fill a disk. When a row was last written or read is
kept in a small table of its own: recording a read then rewrites a few bytes, not the 5 KB row.
``fewtune cache info`` and ``fewtune cache clear`` look at and empty it.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewtune.errors import FewtuneError

log = logging.getLogger(__name__)

#: Size cap of the cache folder when ``$FEWTUNE_CACHE_MAX_MB`` is not set.
DEFAULT_MAX_MB = 2048
#: Eviction goes this far below the cap, so that not every later write has to evict again.
_EVICT_TO = 0.9
_PATTERN = "features-*.sqlite"


def max_cache_bytes() -> int:
    """The cap in bytes: ``$FEWTUNE_CACHE_MAX_MB`` megabytes (0 keeps nothing), else :data:`DEFAULT_MAX_MB`.

    Raises:
        FewtuneError: the variable is not a number of megabytes >= 0.
    """
    text = os.environ.get("FEWTUNE_CACHE_MAX_MB", "").strip()
    if not text:
        return DEFAULT_MAX_MB * 1024 * 1024
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not math.isfinite(megabytes) or megabytes < 0:
        raise FewtuneError(
            f"FEWTUNE_CACHE_MAX_MB={text!r}: expected a size in megabytes >= 0, e.g. 2048; unset it for the "
            "default"
        )
    return int(megabytes * 1024 * 1024)


def default_cache_dir() -> Path:
    """``$FEWTUNE_CACHE_DIR``, else the platform's user cache folder (e.g. ``~/.cache/fewtune``)."""
    if env := os.environ.get("FEWTUNE_CACHE_DIR"):
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fewtune", appauthor=False))


#: a write of one row (one image predicted) checks the cap at most this often per cache file:
#: the check stats every cache file on disk (2 ms of a 27 ms predict with two dozen of them),
#: and one row a call for a few seconds overshoots the cap by kilobytes
SINGLE_ROW_CHECK_SECONDS = 5.0
_last_cap_check: dict[Path, float] = {}


class FeatureCache:
    """Embeddings of one backbone, stored as float32 rows of a fixed size."""

    def __init__(self, directory: str | Path, fingerprint: str, dim: int, max_bytes: int | None = None):
        self.path = Path(directory) / f"features-{fingerprint[:24]}.sqlite"
        self.dim = dim
        self.max_bytes = max_cache_bytes() if max_bytes is None else max_bytes
        self._db: sqlite3.Connection | None = None
        self._opened: tuple[int, int] | None = None  # (device, inode) of the file opened
        for attempt in range(8):
            try:
                self._db = self._open()
                break
            except sqlite3.OperationalError as exc:
                # busy: another process is creating or switching the same file to WAL (that lock is
                # not covered by the busy timeout); never a reason to move the file aside
                if attempt == 7:
                    log.info("feature cache: busy, running uncached this time (%s)", exc)
                    break
                time.sleep(0.02 * 2**attempt)
            except (sqlite3.DatabaseError, OSError) as exc:
                self._recover(exc)
                break

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute(
            "PRAGMA auto_vacuum=INCREMENTAL"
        )  # takes effect on a new file only: lets eviction shrink it
        db.execute("PRAGMA journal_mode=WAL")
        # no fsync per commit: a power cut may forget the last rows written, never corrupt the file,
        # and a cache can afford that (an fsync was ~2 ms of every single-image predict)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS features (sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        # rows of a cache from before the cap have no entry here: they count as used longest ago
        db.execute("CREATE TABLE IF NOT EXISTS used (sha256 TEXT PRIMARY KEY, at REAL NOT NULL)")
        db.execute("CREATE INDEX IF NOT EXISTS used_at ON used (at)")
        db.execute("SELECT count(*) FROM features").fetchone()  # fails here if the file is garbage
        self._opened = _identity(self.path)
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
                for key, blob in self._db.execute(
                    f"SELECT sha256, vector FROM features WHERE sha256 IN ({marks})", chunk
                ):
                    if isinstance(blob, bytes) and len(blob) == 4 * self.dim:
                        vector = np.frombuffer(blob, dtype=np.float32)
                        if np.isfinite(vector).all():
                            found[key] = vector
            self._touch(list(found))
        except sqlite3.OperationalError as exc:  # busy or locked: a miss, never a reason to drop the file
            log.info("feature cache: read skipped (%s)", exc)
            return {}
        except sqlite3.DatabaseError as exc:
            self._recover(exc)
            return {}
        return found

    def _touch(self, keys: list[str]) -> None:
        """Mark rows as used now: eviction drops the least recently used first."""
        if not keys or self._db is None:
            return
        now = time.time()
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT OR REPLACE INTO used VALUES (?, ?)", [(key, now) for key in keys]
                )
        except sqlite3.OperationalError as exc:  # busy: the time of use is advisory, the rows are fine
            log.info("feature cache: could not record use (%s)", exc)

    def put_many(self, rows: dict[str, np.ndarray]) -> None:
        if self._db is None or not rows:
            return
        now = time.time()
        data = [(key, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for key, v in rows.items()]
        for attempt in range(5):
            try:
                with self._db:  # one transaction: a crash leaves all or none of these rows
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)", data)
                    self._db.executemany(
                        "INSERT OR REPLACE INTO used VALUES (?, ?)", [(key, now) for key, _ in data]
                    )
                break
            except sqlite3.OperationalError as exc:
                # busy or locked by another writer: not corruption, so never move the file aside
                # (that lost every other writer's rows); wait and try again, then leave these uncached
                if attempt == 4:
                    log.info("feature cache: %d rows not cached (%s)", len(data), exc)
                    return
                time.sleep(0.05 * 2**attempt)
            except sqlite3.DatabaseError as exc:
                self._recover(exc)
                return
        now = time.monotonic()
        if len(data) == 1 and now - _last_cap_check.get(self.path, -math.inf) < SINGLE_ROW_CHECK_SECONDS:
            return
        _last_cap_check[self.path] = now
        try:
            self._evict()
        except sqlite3.OperationalError as exc:  # busy: the next write evicts
            log.info("feature cache: eviction postponed (%s)", exc)

    def _evict(self) -> None:
        """Past the cap (this file's live pages plus the other cache files on disk), drop this file's
        least recently used rows down to 90% of it, and give the freed pages back to the disk."""
        assert self._db is not None
        others = sum(_size_on_disk(p) for p in _cache_files(self.path.parent) if p != self.path)
        page_size, pages, free = (
            self._db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_size", "page_count", "freelist_count")
        )
        live = (pages - free) * page_size
        if live + others <= self.max_bytes:
            return
        rows = self._db.execute("SELECT count(*) FROM features").fetchone()[0]
        if rows == 0:
            return
        keep_bytes = max(0.0, _EVICT_TO * self.max_bytes - others)
        drop = min(rows, math.ceil((live - keep_bytes) / (live / rows)))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS dropped (sha256 TEXT PRIMARY KEY)")
            self._db.execute("DELETE FROM dropped")
            self._db.execute(
                "INSERT INTO dropped SELECT f.sha256 FROM features f LEFT JOIN used u ON u.sha256 = f.sha256 "
                "ORDER BY coalesce(u.at, 0) LIMIT ?",
                (drop,),
            )
            self._db.execute("DELETE FROM features WHERE sha256 IN (SELECT sha256 FROM dropped)")
            self._db.execute("DELETE FROM used WHERE sha256 IN (SELECT sha256 FROM dropped)")
        self._db.execute("PRAGMA incremental_vacuum")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        log.info(
            "feature cache over %d MB: dropped the %d least recently used rows", self.max_bytes >> 20, drop
        )

    def is_current(self) -> bool:
        """Open on the file at its path now (not cleared or moved aside since), under the cap set now."""
        try:
            return (
                self._db is not None
                and _identity(self.path) == self._opened
                and (self.max_bytes == max_cache_bytes())
            )
        except (OSError, FewtuneError):
            return False

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


_open_here = threading.local()


def shared_cache(directory: str | Path, fingerprint: str, dim: int) -> FeatureCache:
    """This thread's open cache for a backbone, opened once and reused while :meth:`FeatureCache.is_current`.

    Opening one (connect, WAL, schema check) cost ~3 ms of every single-image predict. One
    connection per thread: SQLite connections must not be shared between threads.
    """
    memo: dict[tuple[str, str, int], FeatureCache] = _open_here.__dict__.setdefault("memo", {})
    key = (str(directory), fingerprint, dim)
    cache = memo.get(key)
    if cache is None or not cache.is_current():
        if cache is not None:
            cache.close()
        cache = memo[key] = FeatureCache(directory, fingerprint, dim)
    return cache


def _identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


def _cache_files(directory: Path) -> list[Path]:
    """fewtune's files in the cache folder: one per backbone, and corrupt ones set aside."""
    return sorted(directory.glob(_PATTERN)) + sorted(directory.glob("features-*.corrupt"))


def _size_on_disk(path: Path) -> int:
    """Bytes of a cache file with its write-ahead log; 0 if it vanished meanwhile."""
    total = 0
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            total += file.stat().st_size
        except OSError:
            pass
    return total


@dataclass(frozen=True)
class CacheFile:
    """One backbone's cache file, as ``fewtune cache info`` shows it."""

    path: Path
    rows: int | None  # None: unreadable (it will be replaced on next use)
    bytes: int
    last_used: float | None


def describe(directory: str | Path) -> list[CacheFile]:
    """The cache files in ``directory`` (set aside corrupt ones included), largest first."""
    directory = Path(directory)
    found = []
    for path in _cache_files(directory):
        rows, last = None, None
        if path.suffix == ".sqlite":
            try:
                with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                    rows = db.execute("SELECT count(*) FROM features").fetchone()[0]
                    tables = {
                        row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                    }
                    if "used" in tables:  # a cache from before the cap has none
                        last = db.execute("SELECT max(at) FROM used").fetchone()[0]
            except sqlite3.DatabaseError:
                rows = None
        found.append(CacheFile(path, rows, _size_on_disk(path), last or None))
    return sorted(found, key=lambda f: -f.bytes)


def clear(directory: str | Path) -> tuple[int, int]:
    """Delete fewtune's cache files in ``directory`` (nothing else there), returning (files, bytes) freed.

    A run using the cache meanwhile keeps its open file until it ends, then the space is freed.
    """
    files, freed = 0, 0
    for entry in describe(directory):
        for file in (entry.path, Path(f"{entry.path}-wal"), Path(f"{entry.path}-shm")):
            freed += _delete(file) or 0
        files += 1
    for kept in classifier_files(directory):  # see Backbone.imagenet_classifier
        size = _delete(kept)
        if size is not None:
            freed, files = freed + size, files + 1
    return files, freed


def _delete(file: Path) -> int | None:
    """Delete ``file``, returning the bytes freed, or None if it was already gone."""
    try:
        size = file.stat().st_size
        file.unlink()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FewtuneError(f"{file}: cannot delete ({exc.strerror}); check its permissions") from None
    return size


def classifier_files(directory: str | Path) -> list[Path]:
    """The ImageNet classifiers kept beside the caches (see ``Backbone.imagenet_classifier``)."""
    return sorted((Path(directory) / "classifiers").glob("*.safetensors"))

"""The feature cache is bounded: least recently used rows go past FEWTUNE_CACHE_MAX_MB, and
`fewtune cache info|clear` show and empty it (fewtune's files only)."""

from __future__ import annotations

import itertools
import sqlite3

import numpy as np
import pytest

import fewtune.features.cache
from fewtune.app.cli import main
from fewtune.errors import FewtuneError
from fewtune.features.cache import DEFAULT_MAX_MB, FeatureCache, max_cache_bytes

DIM = 1024  # 4 KB a row


def rows(prefix: str, n: int) -> dict[str, np.ndarray]:
    return {f"{prefix}{i:04d}": np.full(DIM, i, np.float32) for i in range(n)}


@pytest.fixture
def clock(monkeypatch):
    """A clock that ticks once per call: "least recently used" is then exact."""
    ticks = itertools.count(1000)
    monkeypatch.setattr(fewtune.features.cache.time, "time", lambda: float(next(ticks)))


def live_bytes(cache: FeatureCache) -> int:
    db = cache._db
    page_size, pages, free = (
        db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count", "freelist_count")
    )
    return (pages - free) * page_size


def test_least_recently_used_rows_go_first(tmp_path, clock):
    cap = 500 * 1024
    cache = FeatureCache(tmp_path, "fp", DIM, max_bytes=cap)
    old, recent = rows("old", 60), rows("new", 60)
    cache.put_many(old)
    assert len(cache.get_many(list(old)[:10])) == 10  # read: these ten are now recently used
    cache.put_many(recent)  # ~ 120 rows x 4 KB: over the cap

    kept = cache.get_many(list(old) + list(recent))
    assert set(recent) <= set(kept) and set(list(old)[:10]) <= set(kept)
    assert len(kept) < 120
    assert live_bytes(cache) <= cap
    np.testing.assert_array_equal(kept["new0007"], np.full(DIM, 7, np.float32))
    cache.close()
    assert cache.path.stat().st_size <= cap * 1.2  # freed pages went back to the disk


def test_other_backbones_files_count_towards_the_cap(tmp_path, clock):
    (tmp_path / "features-other.sqlite").write_bytes(b"\0" * 400 * 1024)
    cache = FeatureCache(tmp_path, "fp", DIM, max_bytes=500 * 1024)
    cache.put_many(rows("a", 60))
    assert live_bytes(cache) <= 100 * 1024


def test_cap_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("FEWTUNE_CACHE_MAX_MB", raising=False)
    assert max_cache_bytes() == DEFAULT_MAX_MB * 1024 * 1024 == 2048 * 1024 * 1024
    monkeypatch.setenv("FEWTUNE_CACHE_MAX_MB", "1.5")
    assert max_cache_bytes() == 1536 * 1024
    monkeypatch.setenv("FEWTUNE_CACHE_MAX_MB", "0")
    cache = FeatureCache(tmp_path, "fp", DIM)
    cache.put_many(rows("a", 5))
    assert cache.get_many(list(rows("a", 5))) == {}  # a cap of 0 keeps nothing
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("FEWTUNE_CACHE_MAX_MB", bad)
        with pytest.raises(FewtuneError, match=r"FEWTUNE_CACHE_MAX_MB=.*expected a size in megabytes >= 0"):
            max_cache_bytes()


def test_a_cache_from_before_the_cap_is_migrated(tmp_path):
    path = tmp_path / "features-fp.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE features (sha256 TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        db.execute("INSERT INTO features VALUES (?, ?)", ("k", np.ones(DIM, np.float32).tobytes()))
    db.close()
    cache = FeatureCache(tmp_path, "fp", DIM)
    assert list(cache.get_many(["k"])) == ["k"]
    cache.put_many(rows("b", 2))
    assert len(cache.get_many(["k", "b0000", "b0001"])) == 3


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cache_info_and_clear(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FEWTUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FEWTUNE_CACHE_MAX_MB", "64")
    cache = FeatureCache(tmp_path, "fingerprint", DIM)
    cache.put_many(rows("a", 7))
    cache.close()
    (tmp_path / "notes.txt").write_text("not fewtune's")
    (tmp_path / "classifiers").mkdir()
    (tmp_path / "classifiers" / "abc.safetensors").write_bytes(b"x" * 100)  # what `auto` consults

    code, out, _ = run(capsys, "cache", "info")
    assert code == 0
    assert f"feature cache: {tmp_path}" in out and "of 64.0 MB (FEWTUNE_CACHE_MAX_MB)" in out
    assert "features-fingerprint.sqlite: 7 embeddings" in out and "last used" in out
    assert "classifiers/: 1 ImageNet classifiers" in out

    code, out, _ = run(capsys, "cache", "clear")
    assert code == 0 and out.startswith("cleared 2 cache files,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifiers", "notes.txt"]
    assert not list((tmp_path / "classifiers").iterdir())
    code, out, _ = run(capsys, "cache", "info")
    assert "empty" in out


def test_bad_cap_is_a_one_line_error(capsys, monkeypatch, colour_data, tmp_path, tiny_weights):
    monkeypatch.setenv("FEWTUNE_CACHE_MAX_MB", "two gigs")
    code, _, err = run(
        capsys,
        "train",
        str(colour_data),
        "-o",
        str(tmp_path / "m"),
        "--backbone",
        "test_efficientnet",
        "--weights",
        str(tiny_weights),
    )
    assert (
        code == 2
        and err.startswith("error: FEWTUNE_CACHE_MAX_MB='two gigs'")
        and len(err.strip().splitlines()) == 1
    )


def test_one_row_writes_check_the_cap_at_most_every_few_seconds(tmp_path, monkeypatch):
    """A single predict writes one row; checking the cap stats every cache file, so it is
    throttled there, while a batch (a training run) always checks."""
    cache = FeatureCache(tmp_path, "f" * 64, DIM, max_bytes=1 << 30)
    checks = []
    monkeypatch.setattr(FeatureCache, "_evict", lambda self: checks.append(1))
    for i in range(5):
        cache.put_many(rows(f"one{i}-", 1))
    assert len(checks) == 1
    cache.put_many(rows("batch", 3))
    assert len(checks) == 2


def test_one_open_cache_per_thread_reopened_when_its_file_is_replaced(tmp_path):
    import threading

    from fewtune.features.cache import clear, shared_cache

    first = shared_cache(tmp_path, "f" * 64, DIM)
    assert shared_cache(tmp_path, "f" * 64, DIM) is first  # no reconnect per single-image predict
    elsewhere: list = []
    thread = threading.Thread(target=lambda: elsewhere.append(shared_cache(tmp_path, "f" * 64, DIM)))
    thread.start(), thread.join()
    assert elsewhere[0] is not first  # SQLite connections are not shared between threads
    first.put_many({"a": np.ones(DIM, np.float32)})
    clear(tmp_path)  # e.g. `fewtune cache clear` from another process
    again = shared_cache(tmp_path, "f" * 64, DIM)
    assert again is not first and again.get_many(["a"]) == {}
    again.put_many({"b": np.ones(DIM, np.float32)})
    assert set(FeatureCache(tmp_path, "f" * 64, DIM).get_many(["b"])) == {"b"}  # written to the file on disk

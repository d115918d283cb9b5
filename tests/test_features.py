import os
import sqlite3
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import make_image

import fewtune
from fewtune import load_dataset
from fewtune.errors import FewtuneError
from fewtune.features.cache import FeatureCache
from fewtune.features.embedding import embed_files


def test_second_pass_comes_from_the_cache(tiny_backbone, colour_data, tmp_path):
    cache = FeatureCache(tmp_path, tiny_backbone.fingerprint, tiny_backbone.dim)
    paths = load_dataset(colour_data).paths
    first = embed_files(tiny_backbone, paths, cache=cache)
    second = embed_files(tiny_backbone, paths, cache=cache)
    assert (first.computed, second.computed) == (9, 0)
    np.testing.assert_array_equal(first.features, second.features)
    assert first.kept == list(range(9))


def test_cache_matches_uncached_features(tiny_backbone, colour_data):
    paths = load_dataset(colour_data).paths
    np.testing.assert_allclose(
        embed_files(tiny_backbone, paths, cache=False).features,
        embed_files(tiny_backbone, paths).features,
        rtol=1.3e-6,
        atol=1e-5,  # torch.testing's float32 defaults: a folded and a plain forward differ in rounding
    )


def test_cache_is_keyed_by_content_not_name(tiny_backbone, colour_data, tmp_path):
    cache = FeatureCache(tmp_path, tiny_backbone.fingerprint, tiny_backbone.dim)
    original = colour_data / "red" / "0.png"
    embed_files(tiny_backbone, [original], cache=cache)
    moved = original.rename(tmp_path / "renamed.png")
    assert embed_files(tiny_backbone, [moved], cache=cache).computed == 0
    make_image(moved, (0, 0, 0))  # same name, new content
    assert embed_files(tiny_backbone, [moved], cache=cache).computed == 1


def test_corrupt_rows_are_recomputed(tiny_backbone, colour_data, tmp_path):
    cache = FeatureCache(tmp_path, tiny_backbone.fingerprint, tiny_backbone.dim)
    paths = load_dataset(colour_data).paths[:2]
    good = embed_files(tiny_backbone, paths, cache=cache).features
    with sqlite3.connect(cache.path) as db:
        db.execute("UPDATE features SET vector = ?", (b"\x00\x01",))
    again = embed_files(tiny_backbone, paths, cache=cache)
    assert again.computed == 2
    np.testing.assert_allclose(again.features, good, rtol=1.3e-6, atol=1e-5)


def test_corrupt_cache_file_is_replaced_not_fatal(tiny_backbone, colour_data, tmp_path):
    cache = FeatureCache(tmp_path, tiny_backbone.fingerprint, tiny_backbone.dim)
    cache.close()
    cache.path.write_bytes(b"this is not a database" * 100)
    fresh = FeatureCache(tmp_path, tiny_backbone.fingerprint, tiny_backbone.dim)
    assert embed_files(tiny_backbone, load_dataset(colour_data).paths, cache=fresh).computed == 9
    assert cache.path.with_suffix(".corrupt").exists()


def test_concurrent_writers_do_not_collide(tmp_path):
    rows = [{f"{w}-{i}": np.full(8, w, np.float32) for i in range(200)} for w in range(4)]

    def write(w):
        FeatureCache(tmp_path, "f" * 64, 8).put_many(rows[w])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = FeatureCache(tmp_path, "f" * 64, 8).get_many(k for r in rows for k in r)
    assert len(found) == 800 and found["3-7"][0] == 3


def test_bad_image_stops_or_is_skipped(tiny_backbone, colour_data):
    bad = colour_data / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    paths = load_dataset(colour_data).paths
    with pytest.raises(FewtuneError, match=r"broken\.jpg: not a readable image"):
        embed_files(tiny_backbone, paths)
    result = embed_files(tiny_backbone, paths, skip_bad=True)
    assert len(result.kept) == 9 and [p.name for p, _ in result.bad] == ["broken.jpg"]
    assert paths.index(bad) not in result.kept


def test_a_warm_train_never_builds_the_backbone(colour_data, tiny_weights):
    """Every image in the cache: no weights read, no network built, the same classifier."""
    cold = fewtune.train(colour_data, "probe", backbone="test_efficientnet", weights=tiny_weights)
    warm = fewtune.train(colour_data, "probe", backbone="test_efficientnet", weights=tiny_weights)
    assert not warm.backbone.built and warm.training["embeddings_computed"] == 0
    assert np.array_equal(warm.head.support.features, cold.head.support.features)
    photo = next(colour_data.glob("red/*"))
    assert (
        warm.predict([photo])[0].label == "red" and not warm.backbone.built
    )  # cached photo: still no network


def test_adding_cached_images_to_a_loaded_classifier_builds_no_backbone(colour_data, tiny_weights, tmp_path):
    fewtune.train(colour_data, "prototype", backbone="test_efficientnet", weights=tiny_weights).save(
        tmp_path / "m"
    )
    loaded = fewtune.load(tmp_path / "m")
    red = sorted(colour_data.glob("red/*"))
    assert loaded.add_examples("crimson", red[:2]) == 2  # cached by the training run
    assert "crimson" in loaded.classes and not loaded.backbone.built


def test_a_busy_cache_is_never_taken_for_a_corrupt_one(tmp_path, monkeypatch):
    import sqlite3

    cache = FeatureCache(tmp_path, "f" * 64, 8)
    cache.put_many({"a": np.ones(8, np.float32)})
    calls = {"n": 0}

    def busy(exc: Exception) -> None:
        calls["n"] += 1

    monkeypatch.setattr(cache, "_recover", busy)
    real = cache._db

    class Locked:
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, *args):
            raise sqlite3.OperationalError("database is locked")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cache._db = Locked()
    cache.put_many({"b": np.ones(8, np.float32)})  # retried, then left uncached
    assert cache.get_many(["a"]) == {} and calls["n"] == 0  # a busy read is a miss
    cache._db = real
    assert list(cache.get_many(["a"])) == ["a"]  # the file and its rows are still there


def test_warm_train_and_add_never_import_torch(colour_data, tiny_weights, tmp_path):
    """The cache key already pins the backbone, and everything past it runs on NumPy: importing
    torch alone took most of a 2 s warm ``train`` (see fewtune.numeric)."""
    model, flags = tmp_path / "m", ["--backbone", "test_efficientnet", "--weights", str(tiny_weights), "-q"]
    fewtune.train(colour_data, "probe", backbone="test_efficientnet", weights=tiny_weights)  # fills the cache
    report = (
        "import atexit, sys; atexit.register(lambda: print(sorted(m for m in sys.modules if 'torch' in m)))"
    )
    for strategy in ("probe", "prototype"):
        argv = ["train", str(colour_data), "-o", str(model), "--strategy", strategy, *flags]
        ran = subprocess.run(
            [sys.executable, "-c", f"{report}; from fewtune.app.cli import main; main({argv!r})"],
            capture_output=True, text=True, env=os.environ, check=True,
        )  # fmt: skip
        assert ran.stdout.strip() == "[]", (strategy, ran.stdout, ran.stderr)
    argv = ["add", str(model), str(next(colour_data.glob("red/*"))), "--label", "crimson", "-q"]
    ran = subprocess.run(
        [sys.executable, "-c", f"{report}; from fewtune.app.cli import main; main({argv!r})"],
        capture_output=True, text=True, env=os.environ, check=True,
    )  # fmt: skip
    assert ran.stdout.strip() == "[]", ran.stderr
    assert "crimson" in fewtune.load(model).classes

"""`fewtune compare`: learning curves, recommendation, and a report that renders."""

import json

import pytest
from conftest import make_image
from test_cli import run

from fewtune.evaluate.compare import CurvePoint, holdout_split, recommend


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    for c, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220)]):
        for i in range(6):
            make_image(root / f"class{c}" / f"{i}.png", colour, noise_seed=10 * c + i)
    return root


def test_holdout_split_is_fixed_and_disjoint():
    labels = [0] * 10 + [1] * 4
    pool, test = holdout_split(labels, 0.3, seed=0)
    assert holdout_split(labels, 0.3, seed=0) == (pool, test)
    assert len(test) == 3 + 1 and not set(test) & {i for v in pool.values() for i in v}
    assert sorted(test + pool[0] + pool[1]) == list(range(14))


def test_recommendation_prefers_the_cheap_strategy_within_the_ci():
    points = [
        CurvePoint("prototype", 5, 97.6, 0.5, 5, 0.001, 30.0),
        CurvePoint("probe", 5, 98.0, 0.5, 5, 0.04, 30.0),
    ]
    assert recommend(points) == (
        "with 5 examples per class on this data, `prototype` is within 0.4 points of `probe` "
        "at 1/40 of the training time"
    )
    points[0].mean = 90.0
    assert recommend(points) == "with 5 examples per class on this data, `probe` is the most accurate (98.0%)"


def test_compare_writes_a_report_that_renders(capsys, data, tmp_path, tiny_weights, browser):
    from selenium.webdriver.common.by import By

    report = tmp_path / "report"
    flags = ["--backbone", "test_efficientnet", "--weights", tiny_weights, "-q"]
    code, out, err = run(
        capsys, "compare", data, "--shots", "1,2,9", "--draws", "2", "-o", report, "--json", *flags
    )
    assert code == 0, err
    points = json.loads(out)
    assert [(p["strategy"], p["shots"]) for p in points] == [
        ("prototype", 1),
        ("probe", 1),
        ("prototype", 2),
        ("probe", 2),
    ]
    assert "skipped --shots 9" in err
    assert {p.name for p in report.iterdir()} == {"index.html", "accuracy.png", "training-time.png"}

    browser.get((report / "index.html").as_uri())
    for plot in ("accuracy-plot", "time-plot"):
        assert browser.execute_script(f"return document.getElementById('{plot}').naturalWidth") > 100
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results tr")) == 5
    assert "examples per class on this data" in browser.find_element(By.ID, "recommendation").text


def test_near_duplicate_photos_are_found(tmp_path):
    from PIL import Image

    from fewtune.app.demo import demo_photos
    from fewtune.data.leakage import duplicates, fingerprint

    photos = sorted((demo_photos() / "cup").iterdir())[:4]
    original = Image.open(photos[0])
    original.resize((original.width // 2, original.height // 2)).save(tmp_path / "smaller.jpg", quality=60)
    prints = fingerprint([*photos, tmp_path / "smaller.jpg"])
    assert duplicates(prints, [0, 1, 2, 3], [4]) == [(0, 4)]
    assert duplicates(prints, [1, 2], [3]) == []


def test_duplicates_across_the_split_are_reported_and_left_out(data, tiny_weights):
    import fewtune
    from fewtune.data.dataset import load_dataset
    from fewtune.evaluate.compare import compare

    for c in range(3):  # every class gets an exact copy of one of its images
        (data / f"class{c}" / "copy.png").write_bytes((data / f"class{c}" / "0.png").read_bytes())
    dataset = load_dataset(data)
    backbone = fewtune.create_backbone("test_efficientnet", weights=tiny_weights)
    kept = compare(dataset, backbone, [1], ["prototype"], draws=2, test_fraction=0.5)
    cleaned = compare(dataset, backbone, [1], ["prototype"], draws=2, test_fraction=0.5, dedupe=True)
    assert kept.leaks and not kept.deduped and cleaned.deduped
    assert cleaned.test_images == kept.test_images - len({t for t, _ in kept.leaks})


def test_ctrl_c_returns_what_was_measured(data, tiny_weights):
    import fewtune
    from fewtune.data.dataset import load_dataset
    from fewtune.evaluate.compare import compare

    calls = []

    def advance(n):
        calls.append(n)
        if len(calls) == 3:  # 2 draws at 1 shot, then 1 of 2 at 2 shots
            raise KeyboardInterrupt

    backbone = fewtune.create_backbone("test_efficientnet", weights=tiny_weights)
    result = compare(load_dataset(data), backbone, [1, 2, 3], ["prototype"], draws=2, advance=advance)
    assert result.interrupted
    assert [(p.shots, p.draws) for p in result.points] == [(1, 2), (2, 1)]


def test_finetune_is_compared_on_its_own_tuned_features(data, tiny_weights, monkeypatch):
    import fewtune
    from fewtune.data.dataset import load_dataset
    from fewtune.evaluate.compare import compare
    from fewtune.strategies.finetune import decision

    monkeypatch.setattr(decision, "AUTO_TOP", 1)
    backbone = fewtune.create_backbone("test_efficientnet", weights=tiny_weights)
    monkeypatch.setattr(decision, "HEADROOM", 1.01)  # always worth tuning, even on easy colours
    result = compare(load_dataset(data), backbone, [2], ["prototype", "finetune"], draws=2, test_fraction=0.5)
    tuned, frozen = (next(p for p in result.points if p.strategy == s) for s in ("finetune", "prototype"))
    assert tuned.draws == frozen.draws == 2 and tuned.train_seconds > frozen.train_seconds
    assert backbone.tuned_sha256 is None

"""`fewtune evaluate`: the numbers, the CLI and the HTML report."""

import json
import shutil

import pytest
from conftest import make_image
from test_cli import run

import fewtune
from fewtune.evaluate.evaluation import evaluate, write_html


@pytest.fixture
def trained(tiny_backbone, colour_data):
    return fewtune.train(colour_data, backbone=tiny_backbone)


def test_scores_on_a_hand_checked_case(trained, tmp_path):
    # test set: 2 red, 1 green, and one "green" that is really red -> exactly one mistake
    test = tmp_path / "test"
    make_image(test / "red" / "a.png", (220, 30, 30), noise_seed=101)
    make_image(test / "red" / "b.png", (220, 30, 30), noise_seed=102)
    make_image(test / "green" / "c.png", (30, 200, 40), noise_seed=103)
    make_image(test / "green" / "mislabelled.png", (220, 30, 30), noise_seed=104)
    report = evaluate(trained, fewtune.load_dataset(test))
    assert report.images == 4 and report.accuracy == 0.75
    assert report.balanced_accuracy == pytest.approx((1.0 + 0.5) / 2, abs=1e-4)  # blue has no test images
    scores = {s.label: s for s in report.per_class}
    assert scores["red"].precision == pytest.approx(2 / 3, abs=1e-4) and scores["red"].recall == 1.0
    assert scores["green"].recall == 0.5 and scores["blue"].support == 0
    assert report.confusion[trained.classes.index("green")][trained.classes.index("red")] == 1
    [mistake] = report.mistakes
    assert mistake.path.endswith("mislabelled.png") and (mistake.truth, mistake.predicted) == ("green", "red")
    assert 0 <= report.ece <= 1 and report.unknown_rejected is None


def test_unknown_test_classes_measure_rejection(trained, tmp_path, colour_data):
    test = tmp_path / "test"
    shutil.copytree(colour_data / "red", test / "red")
    make_image(test / "purple" / "p.png", (128, 0, 128))
    report = evaluate(trained, fewtune.load_dataset(test))
    assert report.unknown_classes == ["purple"] and report.unknown_images == 1 and report.images == 3
    assert report.unknown_rejected in (0.0, 1.0)


def test_cli_evaluate(capsys, trained, colour_data, tmp_path):
    trained.save(tmp_path / "m.fewtune")
    code, out, err = run(
        capsys, "evaluate", tmp_path / "m.fewtune", colour_data, "--json", "-q", "--html", tmp_path / "r.html"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["accuracy"] == 1.0 and len(report["per_class"]) == 3 and report["confusion"][0][0] == 3
    assert (tmp_path / "r.html").read_text().count("<tr>") >= 8
    code, out, _ = run(capsys, "evaluate", tmp_path / "m.fewtune", colour_data, "-q")
    assert code == 0 and "accuracy 100.0% on 9 images" in out
    make_image(tmp_path / "other" / "pear" / "p.png", (0, 0, 0))
    code, _, err = run(capsys, "evaluate", tmp_path / "m.fewtune", tmp_path / "other")
    assert code == 2 and "none of its classes (pear) is one of the classifier's" in err


def test_html_report_renders_in_a_browser(trained, colour_data, tmp_path, browser):
    from selenium.webdriver.common.by import By

    path = write_html(
        evaluate(trained, fewtune.load_dataset(colour_data)), tmp_path / "report.html", "colours"
    )
    browser.get(path.as_uri())
    assert "Accuracy 100.0% on 9 images" in browser.find_element(By.ID, "summary").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#per-class tr")) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#confusion tr")) == 4


def test_copies_of_training_images_are_reported_and_left_out(real_backbone, photo_data, tmp_path):
    from conftest import unseen_photos

    trained = fewtune.train(photo_data, "prototype", backbone=real_backbone)
    test = tmp_path / "test" / "scissors"
    test.mkdir(parents=True)
    (test / "copy.jpg").write_bytes(sorted((photo_data / "scissors").iterdir())[0].read_bytes())
    (test / "new.jpg").write_bytes(unseen_photos("scissors", 1)[0].read_bytes())
    report = evaluate(trained, fewtune.load_dataset(test.parent, min_classes=1))
    assert [p.split("/")[-1] for p in report.duplicates_of_training] == ["copy.jpg"] and report.images == 2
    cleaned = evaluate(trained, fewtune.load_dataset(test.parent, min_classes=1), dedupe=True)
    assert cleaned.images == 1 and cleaned.deduped

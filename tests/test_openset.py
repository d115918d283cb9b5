"""Open-set rejection and calibrated probabilities, on toy embeddings and tiny models."""

import math

import numpy as np
import pytest
from test_strategies import blobs

import fewtune
from fewtune.errors import FewtuneError
from fewtune.geometry import class_means
from fewtune.model.calibration import expected_calibration_error, fit_temperature
from fewtune.model.openset import calibrate_threshold, novelty
from fewtune.numeric import softmax


def test_novelty_grows_away_from_every_class():
    features, labels = blobs(per_class=4)
    prototypes = class_means(features, labels, 3)
    near = novelty(features, prototypes)
    # seeded: the global RNG state depends on which tests ran before (and 1 draw in 200, e.g.
    # seed 0, lands near a class)
    far = novelty(np.random.default_rng(1).standard_normal((20, features.shape[1])) * 3, prototypes)
    assert near.max() < far.min()
    assert novelty(prototypes, prototypes) == pytest.approx(np.zeros(3), abs=1e-6)
    assert novelty(prototypes, prototypes).min() >= 0  # rounding never makes it -1e-7 ("-0.000")


def test_threshold_accepts_most_known_examples():
    features, labels = blobs(per_class=30, seed=2)
    threshold, how = calibrate_threshold(features[::2], labels[::2], 3)
    assert how["method"].startswith("leave-one-out conformal quantile")
    accepted = novelty(features[1::2], class_means(features[::2], labels[::2], 3)) <= threshold
    assert accepted.mean() >= 0.85


def test_one_shot_threshold_rejects_inputs_as_far_as_other_classes():
    features, labels = blobs(per_class=1, num_classes=5)
    threshold, how = calibrate_threshold(features, labels, 5)
    assert how["method"].startswith("one example per class")
    assert 0 < threshold < 2


def test_temperature_fixes_overconfidence():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    logits = rng.standard_normal((400, 4))
    logits[np.arange(400), labels] += 1.0  # right about half the time...
    logits *= 8  # ...but nearly certain every time
    temperature, report = fit_temperature(logits, labels)
    assert temperature > 2 and report["nll_after"] < report["nll_before"]
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits / temperature), labels)
    assert after < before / 3


def test_ece_of_a_perfectly_calibrated_case():
    probabilities = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probabilities, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probabilities, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


@pytest.fixture
def clf(tiny_backbone, colour_data):
    return fewtune.train(colour_data, backbone=tiny_backbone)


def test_prediction_fields_and_switches(clf, colour_data):
    image = colour_data / "red" / "0.png"
    [default] = clf.predict(image)
    assert not default.is_unknown and default.label == "red" and default.novelty >= 0
    [strict] = clf.predict(image, unknown_threshold=-1.0)
    assert strict.is_unknown and strict.label == "unknown" and strict.top_k[0][0] == "red"
    [renamed] = clf.predict(image, unknown_threshold=-1.0, unknown_label="none of these")
    assert renamed.label == "none of these"
    [closed] = clf.predict(image, unknown_threshold=-1.0, open_set=False)
    assert not closed.is_unknown and closed.label == "red"


def test_probabilities_follow_the_class_order(clf, colour_data):
    images = sorted(colour_data.rglob("*.png"))
    matrix = clf.predict_proba(images)
    for row, prediction in zip(matrix, clf.predict(images, top_k=3)):
        assert list(prediction.probabilities) == clf.classes
        assert list(prediction.probabilities.values()) == pytest.approx(list(row), abs=1e-6)
        assert prediction.probabilities[prediction.top_k[0][0]] == prediction.score


def test_open_set_settings_are_saved(clf, tmp_path):
    clf.save(tmp_path / "m")
    loaded = fewtune.load(tmp_path / "m")
    assert loaded.open_set == clf.open_set and math.isfinite(loaded.open_set.threshold)
    assert loaded.temperature == clf.temperature


def test_a_class_named_like_the_unknown_label_is_refused(tiny_backbone, colour_data):
    (colour_data / "red").rename(colour_data / "unknown")
    with pytest.raises(
        FewtuneError,
        match="a class is named 'unknown', the label given to inputs of no known class.*--unknown-label",
    ):
        fewtune.train(colour_data, backbone=tiny_backbone)
    clf = fewtune.train(colour_data, backbone=tiny_backbone, unknown_label="other")
    assert "unknown" in clf.classes and clf.open_set.unknown_label == "other"

"""The default path is trustworthy: honest temperatures, thresholds on held-out scores, unknown
answers that say they are in doubt, and ``auto`` that fine-tunes only on held-out evidence."""

import json
import math

import numpy as np
import pytest
from test_strategies import blobs

import fewtune
from fewtune.model.calibration import LOG_T_BOUNDS, expected_calibration_error, fit_temperature
from fewtune.model.openset import (
    ONE_SHOT_MARGIN,
    UNKNOWN_PROBABILITY_CAP,
    calibrate_threshold,
    unknown_probability,
)
from fewtune.numeric import softmax
from fewtune.strategies.finetune import Finetune, decision


def test_all_right_held_out_predictions_do_not_make_the_temperature_certain():
    labels = np.tile(np.arange(5), 5)
    logits = np.full((25, 5), -20.0)
    logits[np.arange(25), labels] = 20.0  # every held-out prediction right, by a mile
    temperature, report = fit_temperature(logits, labels)
    assert "on_search_bound" not in report
    assert LOG_T_BOUNDS[0] + 0.5 < math.log(temperature) < LOG_T_BOUNDS[1] - 0.5
    confidence = softmax(logits / temperature).max(1)
    assert confidence.max() < 0.99  # 25 successes allow about 26/27, not certainty
    assert confidence.min() > 0.9


def test_one_shot_threshold_is_mean_plus_a_margin_of_the_other_class_scores():
    features, labels = blobs(per_class=1, num_classes=6)
    threshold, how = calibrate_threshold(features, labels, 6)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -2)
    scores = 1 - similarity.max(1)
    spread = scores.std(ddof=1)  # the sample standard deviation
    assert threshold == pytest.approx(float(scores.mean() + ONE_SHOT_MARGIN * spread), abs=1e-5)
    assert how["spread"] == pytest.approx(float(spread), abs=1e-5)


def test_unknown_probability_is_a_half_at_the_threshold_and_never_certain():
    novelty = np.array([0.0, 0.3, 0.5, 2.0], dtype=np.float32)
    p = unknown_probability(novelty, 0.3, 0.05)
    assert p[1] == pytest.approx(0.5)
    assert p[0] == pytest.approx(1 - UNKNOWN_PROBABILITY_CAP) and p[3] == pytest.approx(
        UNKNOWN_PROBABILITY_CAP
    )
    assert bool((p[1:] >= p[:-1]).all())


@pytest.fixture
def frozen(tiny_backbone, colour_data):
    return fewtune.train(colour_data, "probe", backbone=tiny_backbone)


def test_one_example_per_class_gets_the_temperature_fitted_on_other_tasks(
    tiny_backbone, colour_data, tmp_path
):
    """At 1 shot nothing can be held out; the temperature measured on development episodes of
    other classes applies (T = 1 left Caltech-101 1-shot probabilities 22-36 points under-confident)."""
    one_each = tmp_path / "one"
    for folder in sorted(colour_data.iterdir()):
        (one_each / folder.name).mkdir(parents=True)
        first = sorted(folder.iterdir())[0]
        (one_each / folder.name / first.name).write_bytes(first.read_bytes())
    frozen = {
        "candidates": ["probe", "prototype"]
    }  # random tiny weights look unlike ImageNet: auto would tune
    for strategy, settings in (("prototype", {}), ("probe", {}), ("auto", frozen)):
        classifier = fewtune.train(one_each, strategy, backbone=tiny_backbone, **settings)
        assert 0.25 <= classifier.temperature <= 0.5, strategy  # from how alike the classes look
        assert "other tasks" in classifier.calibration["method"]
        loaded = fewtune.load(classifier.save(tmp_path / f"{strategy}.fewtune"), backbone=tiny_backbone)
        assert loaded.temperature == classifier.temperature
    assert (
        fewtune.train(one_each, "probe", backbone=tiny_backbone, l2=0.01).temperature == 1.0
    )  # not measured


def test_an_unknown_answer_never_carries_a_probability_of_one(frozen, colour_data):
    [p] = frozen.predict(colour_data / "red" / "0.png", unknown_threshold=-1.0)
    assert p.is_unknown and p.nearest == p.top_k[0][0] == "red"
    assert p.score == p.unknown_probability < 1.0
    assert p.score != p.probabilities["red"]
    as_json = p.to_dict()
    assert as_json["nearest"] == "red" and as_json["unknown_probability"] == p.score
    [known] = frozen.predict(colour_data / "red" / "0.png")
    assert (
        not known.is_unknown and known.score == known.probabilities["red"] and known.unknown_probability < 0.5
    )


def _cross_fit_says(
    monkeypatch, tuned_correct: int, frozen_correct: int, familiarity: float = 0.2, alike: float = 0.3
):
    """Images unlike ImageNet (so the rule says tune), not far enough to skip the check, whose
    classes look as alike as ``alike`` (between-class similarity)."""
    original = Finetune._cross_fitted_tune

    def rigged(self, *args, **kwargs):
        evidence = original(self, *args, **kwargs)
        return {**evidence, "tuned_correct": tuned_correct, "frozen_correct": frozen_correct}

    monkeypatch.setattr(Finetune, "_cross_fitted_tune", rigged)
    monkeypatch.setattr(
        "fewtune.strategies.finetune.decision.imagenet_familiarity", lambda backbone, features: familiarity
    )
    monkeypatch.setattr(
        "fewtune.strategies.finetune.decision.between_class_similarity", lambda features, labels: alike
    )


def test_auto_keeps_frozen_features_when_a_cross_fitted_tune_does_not_beat_them(
    tiny_backbone, colour_data, monkeypatch
):
    _cross_fit_says(monkeypatch, tuned_correct=2, frozen_correct=2)
    classifier = fewtune.train(colour_data, backbone=tiny_backbone)
    assert classifier.pretrained is None and classifier.backbone is tiny_backbone
    assert classifier.fit_report["chosen"] in ("probe", "prototype")
    assert "kept frozen" in classifier.fit_report["fine-tuning"]["why"]


def test_auto_fine_tunes_when_held_out_evidence_says_it_pays(
    tiny_backbone, colour_data, monkeypatch, tmp_path
):
    _cross_fit_says(monkeypatch, tuned_correct=3, frozen_correct=1)
    messages = []
    classifier = fewtune.train(colour_data, backbone=tiny_backbone, notify=messages.append)
    assert messages and messages[0].startswith("fine-tuning:") and " s" in messages[0]
    assert classifier.fit_report["chosen"] == "finetune" and classifier.pretrained is tiny_backbone
    assert (
        classifier.backbone.tuned_sha256
        and classifier.head.support.novelty.shape == classifier.head.support.features.shape
    )
    # a tuned body keeps its head's own scale: a cross-fitted tune's temperature made it under-confident
    assert classifier.temperature == 1.0 and classifier.calibration["tuned_body"]
    # novelty is measured on pretrained embeddings, and survives a save and a load
    classifier.save(tmp_path / "m")
    loaded = fewtune.load(tmp_path / "m", backbone=tiny_backbone)
    assert (
        loaded.pretrained.fingerprint == tiny_backbone.fingerprint
    )  # a copy: load never changes the caller's backbone
    assert np.array_equal(loaded.head.support.novelty, classifier.head.support.novelty)
    image = colour_data / "green" / "1.png"
    [before], [after] = classifier.predict(image), loaded.predict(image)
    assert before.novelty == after.novelty and before.label == after.label == "green"
    assert json.loads((tmp_path / "m" / "config.json").read_text())["strategy"]["fit"]["chosen"] == "finetune"
    # a class added later is embedded by both bodies
    loaded.add_examples("red2", [colour_data / "red" / "0.png", colour_data / "red" / "1.png"])
    assert len(loaded.head.support.novelty) == len(loaded.head.support.features) == 11


@pytest.mark.parametrize(
    ("familiarity", "alike", "why"),
    [(0.05, 0.3, "far from ImageNet"), (0.2, 0.6, "look alike")],
)
def test_some_images_are_tuned_without_a_cross_fitted_check(
    tiny_backbone, colour_data, monkeypatch, familiarity, alike, why
):
    """Images far from ImageNet, and look-alike classes unlike it (characters, not blurry photos):
    there the check only vetoed tunes that paid (bench/cross_fit_gate.py), so it is not run."""
    _cross_fit_says(monkeypatch, tuned_correct=0, frozen_correct=3, familiarity=familiarity, alike=alike)
    checks = []
    monkeypatch.setattr(Finetune, "_cross_fitted_tune", lambda *a, **k: checks.append(1))
    classifier = fewtune.train(colour_data, backbone=tiny_backbone)
    assert classifier.fit_report["chosen"] == "finetune" and classifier.pretrained is tiny_backbone
    assert not checks and why in classifier.fit_report["why"]
    assert "tuned without a cross-fitted check" in classifier.fit_report["why"]


@pytest.mark.parametrize(
    ("familiarity", "similarity", "skips"),
    [
        (None, 0.9, None),
        (0.05, 0.1, "far from ImageNet"),
        (0.2, 0.6, "look alike"),
        (0.2, 0.3, None),
        (0.3, 0.9, None),
    ],
)
def test_which_images_skip_the_cross_fitted_check(monkeypatch, familiarity, similarity, skips):
    monkeypatch.setattr(decision, "imagenet_familiarity", lambda backbone, features: familiarity)
    monkeypatch.setattr(decision, "between_class_similarity", lambda features, labels: similarity)
    why = decision.tune_without_check(None, np.zeros((4, 3), dtype=np.float32), np.array([0, 0, 1, 1]))
    assert (why is None) if skips is None else (skips in why)


def test_no_tune_means_frozen_strategies_only(tiny_backbone, colour_data, monkeypatch):
    _cross_fit_says(monkeypatch, tuned_correct=3, frozen_correct=0)
    classifier = fewtune.train(colour_data, candidates=["probe", "prototype"], backbone=tiny_backbone)
    assert classifier.pretrained is None and "fine-tuning" not in classifier.fit_report


@pytest.mark.slow
def test_a_fine_tuned_model_accepts_new_images_of_its_own_classes(real_backbone, photo_data):
    from conftest import unseen_photos

    classifier = fewtune.train(photo_data, "finetune", backbone=real_backbone, unfreeze="top:3")
    assert classifier.pretrained is not None
    new = [p for name in ("strawberry", "scissors", "sunflower") for p in unseen_photos(name, 4)]
    answers = classifier.predict(new)
    assert sum(p.is_unknown for p in answers) <= 1  # 12 new photos of known classes
    assert sum(p.label == path.parent.name for p, path in zip(answers, new, strict=True)) >= 10


@pytest.mark.slow
def test_calibration_never_worsens_ece_on_held_out_photos(real_backbone, tmp_path):
    from fewtune.app.demo import demo_photos

    root = tmp_path / "train"
    test_paths, test_labels = [], []
    classes = sorted(p.name for p in demo_photos().iterdir() if p.is_dir())
    for c, name in enumerate(classes):
        files = sorted((demo_photos() / name).iterdir())
        (root / name).mkdir(parents=True)
        for src in files[:4]:
            (root / name / src.name).write_bytes(src.read_bytes())
        test_paths += files[4:]
        test_labels += [c] * len(files[4:])
    truth = np.array(test_labels)
    for strategy in ("prototype", "probe"):
        classifier = fewtune.train(root, strategy, backbone=real_backbone)
        batch, _ = classifier.embed(test_paths)
        before = expected_calibration_error(
            classifier.head.probabilities(batch.features, temperature=1.0), truth
        )
        after = expected_calibration_error(classifier.head.probabilities(batch.features), truth)
        assert after <= before + 1e-9, strategy
        assert "on_search_bound" not in classifier.calibration


def test_the_server_measures_a_tuned_models_novelty_on_pretrained_embeddings(
    tiny_backbone, colour_data, monkeypatch, tmp_path
):
    from fastapi.testclient import TestClient

    from fewtune.app.server import ServerConfig, create_app

    _cross_fit_says(monkeypatch, tuned_correct=3, frozen_correct=1)
    classifier = fewtune.train(colour_data, backbone=tiny_backbone)
    assert classifier.pretrained is tiny_backbone
    image = colour_data / "blue" / "2.png"
    [expected] = classifier.predict(image)
    config = ServerConfig(models_dir=tmp_path / "models")
    with TestClient(
        create_app(classifier.backbone, classifier, config), base_url="http://127.0.0.1:8000"
    ) as client:
        [served] = client.post(
            "/predict", files=[("file", ("2.png", image.read_bytes(), "image/png"))]
        ).json()
        assert (
            served["novelty"] == pytest.approx(expected.novelty, abs=1e-4)
            and served["nearest"] == expected.nearest
        )
        added = client.post(
            "/classes/teal/examples", files=[("file", ("t.png", image.read_bytes(), "image/png"))]
        )
        assert added.status_code == 200, added.text
        [again] = client.post("/predict", files=[("file", ("2.png", image.read_bytes(), "image/png"))]).json()
        assert again["nearest"] in ("blue", "teal") and not again["is_unknown"]


def test_a_class_added_to_a_tuned_auto_model_keeps_the_tuned_head(
    tiny_backbone, colour_data, monkeypatch, tmp_path
):
    _cross_fit_says(monkeypatch, tuned_correct=3, frozen_correct=1)
    classifier = fewtune.train(colour_data, backbone=tiny_backbone)
    classifier.save(tmp_path / "m")
    loaded = fewtune.load(tmp_path / "m", backbone=tiny_backbone)
    temperature = loaded.temperature
    loaded.add_examples("teal", [colour_data / "blue" / "0.png"])
    assert loaded.fit_report["chosen"] == "finetune" and loaded.pretrained is not None
    assert loaded.temperature == temperature == 1.0 and loaded.calibration.get("tuned_body")


def test_finetune_at_one_shot_on_the_pretrained_body_is_calibrated_as_prototype(
    tiny_backbone, colour_data, tmp_path, monkeypatch
):
    monkeypatch.setattr(  # ImageNet-like images: one example a class keeps the pretrained body
        "fewtune.strategies.finetune.decision.imagenet_familiarity", lambda backbone, features: 0.9
    )
    one_each = tmp_path / "one"
    for folder in sorted(colour_data.iterdir()):
        (one_each / folder.name).mkdir(parents=True)
        first = sorted(folder.iterdir())[0]
        (one_each / folder.name / first.name).write_bytes(first.read_bytes())
    frozen = fewtune.train(one_each, "finetune", backbone=tiny_backbone)
    prototype = fewtune.train(one_each, "prototype", backbone=tiny_backbone)
    assert not frozen.fit_report["head"]["trained"] and frozen.pretrained is None
    assert frozen.temperature == prototype.temperature != 1.0  # the same logits, the same rule

import json

import numpy as np
import pytest

import fewtune
from fewtune.errors import FewtuneError
from fewtune.model import classifier as classifier_module
from fewtune.storage import saved_model as storage


@pytest.fixture
def trained(tiny_backbone, colour_data):
    return fewtune.train(colour_data, "probe", backbone=tiny_backbone)


def test_train_summary(trained, colour_data):
    assert trained.classes == ["blue", "green", "red"]
    assert trained.training["per_class"] == {"blue": 3, "green": 3, "red": 3}
    assert trained.fit_report["l2_chosen_by"] == "cross-validation"


@pytest.mark.parametrize("strategy", ["prototype", "probe"])
def test_save_load_predict_gives_identical_probabilities(tiny_backbone, colour_data, tmp_path, strategy):
    clf = fewtune.train(colour_data, strategy, backbone=tiny_backbone)
    clf.save(tmp_path / "m.fewtune")
    loaded = fewtune.load(tmp_path / "m.fewtune")
    assert loaded.classes == clf.classes and loaded.strategy.name == strategy
    images = sorted(colour_data.rglob("*.png"))
    assert np.array_equal(loaded.predict_proba(images), clf.predict_proba(images))
    assert [p.to_dict() for p in loaded.predict(images, top_k=3)] == [
        p.to_dict() for p in clf.predict(images, top_k=3)
    ]


def test_saved_folder_holds_only_json_and_safetensors(trained, tmp_path):
    path = trained.save(tmp_path / "m.fewtune")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "strategy.safetensors",
        "support.safetensors",
    ]
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == classifier_module.FORMAT_VERSION
    assert config["backbone"]["weights_sha256"] == trained.backbone.weights_sha256
    assert config["classes"] == ["blue", "green", "red"]
    assert config["strategy"]["name"] == "probe" and "l2" in config["strategy"]["fit"]


def test_predictions_keep_label_and_score_together(trained, colour_data):
    """top_k is sorted and its labels index the same probabilities as predict_proba's columns."""
    images = sorted(colour_data.rglob("*.png"))
    probabilities = trained.predict_proba(images)
    for row, prediction in zip(probabilities, trained.predict(images, top_k=3)):
        scores = [s for _, s in prediction.top_k]
        assert scores == sorted(scores, reverse=True) and prediction.label == prediction.top_k[0][0]
        for label, score in prediction.top_k:
            assert score == pytest.approx(row[trained.classes.index(label)], abs=1e-6)
    assert probabilities.sum(1) == pytest.approx(1.0)


def test_interrupted_save_keeps_the_previous_model(trained, tmp_path, monkeypatch):
    path = trained.save(tmp_path / "models" / "m.fewtune")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "_save_tensors", crash)
    with pytest.raises(KeyboardInterrupt):
        trained.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == [
        ".m.fewtune.lock",
        "m.fewtune",
    ]  # no staging folder left behind


def test_save_never_overwrites_something_else(trained, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(
        FewtuneError, match="exists and is not a fewtune classifier; choose another output path"
    ):
        trained.save(tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def test_newer_format_is_refused_and_older_ones_load(trained, tmp_path):
    path = trained.save(tmp_path / "m.fewtune")
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = 1  # before fine-tuned bodies: no tuned_sha256
    del config["backbone"]["tuned_sha256"]
    (path / "config.json").write_text(json.dumps(config))
    assert fewtune.load(path).classes == trained.classes
    config["format_version"] = 99
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        FewtuneError,
        match=r"in format 99, newer than this fewtune .* reads \(format 2\); "
        r"upgrade with `pip install -U fewtune`",
    ):
        fewtune.load(path)


def test_other_backbone_weights_are_refused(trained, tmp_path):
    path = trained.save(tmp_path / "m.fewtune")
    config = json.loads((path / "config.json").read_text())
    config["backbone"]["weights_sha256"] = "0" * 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        FewtuneError,
        match=r"trained with test_efficientnet weights 000000000000… .* install the same weights or retrain",
    ):
        fewtune.load(path)


def test_not_a_classifier(tmp_path):
    with pytest.raises(FewtuneError, match="not a fewtune classifier \\(no config.json\\)"):
        fewtune.load(tmp_path)


def test_duplicates_across_classes_are_reported(tiny_backbone, colour_data):
    (colour_data / "green" / "copy.png").write_bytes((colour_data / "red" / "0.png").read_bytes())
    clf = fewtune.train(colour_data, backbone=tiny_backbone)
    [duplicate] = clf.training["duplicates_across_classes"]
    assert duplicate["classes"] == ["green", "red"]


def test_skip_bad_reports_and_trains_on_the_rest(tiny_backbone, colour_data):
    (colour_data / "red" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(FewtuneError, match=r"broken\.png: not a readable image"):
        fewtune.train(colour_data, backbone=tiny_backbone)
    clf = fewtune.train(colour_data, backbone=tiny_backbone, skip_bad=True)
    assert clf.training["images"] == 9 and clf.training["bad_images"][0]["path"].endswith("broken.png")


def test_real_photos_end_to_end(real_backbone, photo_data, tmp_path):
    """Three photos per class on the real backbone classify unseen photos of those classes."""
    from conftest import unseen_photos

    for strategy in ("prototype", "probe"):
        clf = fewtune.train(photo_data, strategy, backbone=real_backbone)
        clf.save(tmp_path / f"{strategy}.fewtune")
        loaded = fewtune.load(tmp_path / f"{strategy}.fewtune", backbone=real_backbone)
        for name in ("strawberry", "scissors", "sunflower"):
            assert [p.label for p in loaded.predict(unseen_photos(name), open_set=False)] == [name] * 3


def test_a_class_it_never_saw_is_unknown(real_backbone, photo_data):
    """Taught strawberries and scissors from 3 photos each, it calls sunflowers "unknown"."""
    import shutil

    from conftest import unseen_photos

    shutil.rmtree(photo_data / "sunflower")
    clf = fewtune.train(photo_data, backbone=real_backbone)
    sunflowers = clf.predict(unseen_photos("sunflower", 5))
    assert all(p.is_unknown and p.label == "unknown" for p in sunflowers)
    known = clf.predict(unseen_photos("scissors", 3))
    assert [p.label for p in known] == ["scissors"] * 3 and not any(p.is_unknown for p in known)
    assert min(p.novelty for p in sunflowers) > max(p.novelty for p in known)


def test_damaged_files_give_a_clear_error(trained, tmp_path):
    path = trained.save(tmp_path / "m.fewtune")
    config = json.loads((path / "config.json").read_text())
    del config["calibration"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        FewtuneError, match=r"config.json: calibration: expected a JSON object, got nothing \(missing\)"
    ):
        fewtune.load(path)
    path = trained.save(tmp_path / "n.fewtune")
    (path / "strategy.safetensors").write_bytes(b"garbage")
    with pytest.raises(FewtuneError, match="strategy.safetensors: missing or damaged tensor file"):
        fewtune.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(FewtuneError, match="unreadable"):
        fewtune.load(path)

"""Adding and removing classes without the original images."""

import shutil

import numpy as np
import pytest
from conftest import make_image
from test_cli import run

import fewtune
from fewtune.errors import FewtuneError


def split_off(colour_data, name, tmp_path):
    """Move one class out of the training folder, as the images a user adds later."""
    return shutil.move(str(colour_data / name), str(tmp_path / f"later-{name}"))


def test_adding_a_class_to_prototype_is_exact(tiny_backbone, colour_data, tmp_path):
    full = fewtune.train(colour_data, "prototype", backbone=tiny_backbone)
    later = split_off(colour_data, "red", tmp_path)
    partial = fewtune.train(colour_data, "prototype", backbone=tiny_backbone)
    assert partial.add_examples("red", [later]) == 3
    assert partial.classes == ["blue", "green", "red"]
    np.testing.assert_allclose(partial.strategy.prototypes, full.strategy.prototypes, rtol=1e-5, atol=1e-6)


def test_adding_examples_to_an_existing_class(tiny_backbone, colour_data, tmp_path):
    clf = fewtune.train(colour_data, "probe", backbone=tiny_backbone)
    extra = make_image(tmp_path / "extra.png", (200, 40, 40), noise_seed=99)
    clf.add_examples("red", [extra])
    assert clf.training["per_class"]["red"] == 4 and len(clf.head.labels) == 10
    assert clf.predict(extra)[0].label == "red"


def test_remove_class(tiny_backbone, colour_data):
    clf = fewtune.train(colour_data, "probe", backbone=tiny_backbone)
    clf.remove_class("green")
    assert clf.classes == ["blue", "red"] and sorted(set(clf.head.labels.tolist())) == [0, 1]
    assert {p.label for p in clf.predict(colour_data / "red", open_set=False)} == {"red"}
    with pytest.raises(FewtuneError, match="no class 'green' to remove; the classes are blue, red"):
        clf.remove_class("green")
    with pytest.raises(FewtuneError, match="a classifier needs at least two classes"):
        clf.remove_class("red")


def test_cli_add_and_remove_need_no_original_images(capsys, colour_data, tmp_path, tiny_weights):
    model = tmp_path / "m.fewtune"
    later = split_off(colour_data, "red", tmp_path)
    flags = ["--backbone", "test_efficientnet", "--weights", tiny_weights]
    assert run(capsys, "train", colour_data, "-o", model, "--strategy", "probe", *flags, "-q")[0] == 0
    shutil.rmtree(colour_data)  # the training images are gone

    code, _, err = run(capsys, "add", model, "--label", "red", f"{later}/0.png")
    assert code == 0 and "added class 'red' with 1 images (1 in all); 3 classes" in err
    code, out, _ = run(capsys, "predict", model, f"{later}/0.png", "--json", "--closed-set", "-q")
    assert code == 0 and '"label": "red"' in out

    code, _, err = run(capsys, "remove", model, "--label", "blue")
    assert code == 0 and "2 classes left" in err
    assert fewtune.load(model).classes == ["green", "red"]

    code, _, err = run(capsys, "add", model, "--label", "unknown", f"{later}/1.png")
    assert code == 2 and "the label given to inputs of no known class" in err
    code, _, err = run(capsys, "remove", model, "--label", "pear")
    assert code == 2 and "no class 'pear' to remove" in err

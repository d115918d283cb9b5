"""Classifier.predict / predict_proba take paths, folders, PIL images, arrays and tensors, in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fewtune
from fewtune.errors import FewtuneError
from fewtune.features import embedding as features_module


@pytest.fixture
def trained(tiny_backbone, colour_data):
    return fewtune.train(colour_data, "prototype", backbone=tiny_backbone, cache=False)


@pytest.fixture
def files(colour_data):
    """One PNG (lossless: in memory and on disk hold the same pixels) of each class."""
    return [colour_data / name / "0.png" for name in ("red", "green", "blue")]


def as_array(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


@pytest.mark.parametrize(
    "convert",
    [
        lambda p: Image.open(p),
        as_array,
        lambda p: torch.from_numpy(as_array(p)).permute(2, 0, 1).contiguous(),  # C x H x W uint8
        lambda p: torch.from_numpy(as_array(p)).permute(2, 0, 1).float() / 255,  # torchvision's ToTensor
    ],
    ids=["pil", "numpy-hwc", "tensor-uint8", "tensor-float"],
)
def test_a_picture_in_memory_scores_as_its_file(trained, files, convert):
    from_files = trained.predict_proba(files)
    from_memory = trained.predict_proba([convert(p) for p in files])
    np.testing.assert_allclose(from_memory, from_files, atol=1e-5)
    predictions = trained.predict(convert(files[0]))
    assert [(p.path, p.label) for p in predictions] == [("<image 0>", "red")]


def test_greyscale_array_is_read_as_a_grey_picture(trained, tmp_path):
    grey = np.tile(np.arange(40, dtype=np.uint8)[None, :] * 5, (32, 1))  # H x W
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_allclose(
        trained.predict_proba(grey), trained.predict_proba(tmp_path / "grey.png"), atol=1e-5
    )
    np.testing.assert_allclose(
        trained.predict_proba(grey[:, :, None]), trained.predict_proba(grey), atol=1e-6
    )


def test_a_mixed_list_keeps_input_order_and_folders_expand_in_place(trained, files, colour_data):
    inputs = [as_array(files[2]), str(files[0]), colour_data / "green", Image.open(files[1])]
    names = [p.path for p in trained.predict(inputs)]
    greens = [str(p) for p in sorted((colour_data / "green").glob("*.png"))]
    assert names == ["<image 0>", str(files[0]), *greens, "<image 3>"]
    labels = [p.label for p in trained.predict(inputs)]
    assert labels == ["blue", "red", "green", "green", "green", "green"]
    assert trained.predict_proba(inputs).shape == (6, 3)


def test_predict_proba_takes_one_path(trained, files):
    """It used to iterate the string's characters ("t: not a file")."""
    row = trained.predict_proba(str(files[0]))
    assert row.shape == (1, 3) and trained.classes_[row.argmax()] == "red"
    assert list(trained.classes_) == trained.classes


def test_a_batch_tensor_is_a_list_of_images(trained, files):
    batch = torch.stack([torch.from_numpy(as_array(p)).permute(2, 0, 1) for p in files])
    assert [p.label for p in trained.predict(batch)] == ["red", "green", "blue"]


def test_pictures_in_memory_skip_the_feature_cache(trained, files, monkeypatch):
    def no_files(*args, **kwargs):
        raise AssertionError("a picture in memory went through the file path")

    monkeypatch.setattr(features_module, "embed_files", no_files)
    assert trained.predict(Image.open(files[0]))[0].label == "red"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (42, r"^input 0: a int is not an image; pass a path, a folder, a PIL image"),
        (np.zeros((8, 8, 3), dtype=np.float32), r"^input 0: a NumPy array of float32; expected uint8 0-255"),
        (
            np.zeros((8, 8, 5), dtype=np.uint8),
            r"^input 0: a NumPy array of shape \(8, 8, 5\); expected H x W x 3",
        ),
        (torch.full((3, 8, 8), 2.0), r"^input 0: a float tensor outside \[0, 1\] \(already normalised\?\)"),
        ([], r"^no images to predict"),
    ],
)
def test_unsupported_inputs_get_one_line_saying_what_is_expected(trained, bad, message):
    with pytest.raises(FewtuneError, match=message):
        trained.predict(bad)


def test_repr_is_one_short_line(trained):
    text = repr(trained)
    assert (
        text == "Classifier(strategy='prototype', classes=['blue', 'green', 'red'], "
        "backbone='test_efficientnet', examples=9)"
    )


def test_the_package_says_what_it_exports():
    assert "Classifier" in fewtune.__all__ and "train" in fewtune.__all__
    assert all(hasattr(fewtune, name) for name in fewtune.__all__)

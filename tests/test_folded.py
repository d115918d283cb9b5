"""Embedding through a BatchNorm-folded copy: the same features, refolded after fine-tuning."""

import copy

import pytest
import torch
from torch import nn

from fewtune.app.demo import demo_photos
from fewtune.data.images import load
from fewtune.features.embedding import build_transform
from fewtune.features.folded import FoldedEmbedder, fold_batchnorm, pre_logits


@pytest.fixture
def network():
    """timm's tiny EfficientNet with BatchNorm statistics far from the identity, so a fold shows."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet").eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.requires_grad_(False)


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_folding_removes_every_batchnorm_and_keeps_the_features(network):
    folded = fold_batchnorm(network)
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in network.modules())  # the original is untouched
    with torch.no_grad():
        assert torch.allclose(pre_logits(folded, images()), pre_logits(network, images()), atol=1e-5)


def test_the_folded_copy_is_used_from_the_second_call_with_the_same_features(network):
    embed = FoldedEmbedder(network)
    with torch.inference_mode():
        expected = pre_logits(network, images())
        for call in range(3):
            assert torch.allclose(embed(images()), expected, atol=1e-5)
            assert (embed._folded is not None) == (call >= 1)


def test_a_network_changed_in_place_is_embedded_as_it_now_is(network):
    """A fine-tuning step writes parameters and BatchNorm statistics in place: the stale folded copy
    must never answer for the new network."""
    embed = FoldedEmbedder(network)
    with torch.inference_mode():
        embed(images())
        embed(images())
    with torch.no_grad():
        next(m for m in network.modules() if isinstance(m, nn.BatchNorm2d)).running_mean.add_(0.5)
    with torch.inference_mode():
        changed = pre_logits(network, images())
        assert embed._folded is not None
        for _ in range(3):
            assert torch.allclose(embed(images()), changed, atol=1e-5)


def test_a_network_in_train_mode_is_never_folded(network):
    embed = FoldedEmbedder(network.train())
    for _ in range(3):
        embed(images())
    assert embed._folded is None


def test_a_fold_that_would_change_the_answer_is_not_used():
    """A convolution whose output also feeds a skip cannot take its BatchNorm: the check catches it."""

    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.norm(y) + y

        def forward_features(self, x):
            return self(x)

        def forward_head(self, x, pre_logits):
            return x.mean((2, 3))

    network = Branch().eval()
    network.norm.running_var.fill_(4.0)
    embed = FoldedEmbedder(network)
    with torch.inference_mode():
        expected = pre_logits(network, images())
        for _ in range(3):
            assert torch.allclose(embed(images()), expected)
    assert fold_batchnorm(network) is not None and embed._folded is None


def test_a_copied_backbone_folds_its_own_network(tiny_backbone):
    backbone = copy.deepcopy(tiny_backbone)
    backbone.embed(images())
    backbone.embed(images())
    copied = copy.deepcopy(backbone)
    assert copied._embedder is not None and copied._embedder.model is copied.model
    assert copied._embedder._folded is None  # a copy is made of the network, not of its folded copy


def test_the_packaged_network_folds_to_the_same_embeddings(real_backbone):
    transform = build_transform(real_backbone.preprocessing)
    photos = sorted((demo_photos() / "strawberry").iterdir())[:2]
    batch = torch.stack([transform(load(p)) for p in photos]).contiguous(memory_format=torch.channels_last)
    backbone = copy.deepcopy(real_backbone)
    with torch.inference_mode():
        expected = pre_logits(backbone.model, batch)
    first, second, third = (backbone.embed(batch) for _ in range(3))
    assert backbone._embedder is not None and backbone._embedder._folded is not None
    for found in (first, second, third):
        assert torch.allclose(found, expected, atol=1e-4 * float(expected.abs().max()))


def test_a_warmed_up_backbone_has_its_folded_copy_before_the_first_request(tiny_backbone):
    backbone = copy.deepcopy(tiny_backbone)
    backbone.warm_up()
    assert backbone.built and backbone._embedder is not None and backbone._embedder._folded is not None

"""The support pictures and their augmented views, as the loop consumes them.

Each picture is decoded once (:func:`load_pictures`), a few may be held out to validate on
(:func:`validation_split`); :func:`make_views` augments each :func:`views_per_image` times and
runs the views through the frozen bottom of the body once, so the loop only runs the open top
(:func:`view_features`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewtune.data import images
from fewtune.features.backbones import Backbone
from fewtune.strategies.finetune.config import MAX_VIEWS, TARGET_VIEWS, FinetuneConfig
from fewtune.strategies.finetune.stages import SplitBody


def load_pictures(paths: Sequence[Path]) -> list:
    """Decode every support image once (they are few): each epoch's views come from these."""
    return [images.load(p) for p in paths]


def validation_split(
    labels: torch.Tensor, num_classes: int, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices to train on and to validate on: ``fraction`` of each class with 2+ examples."""
    if fraction <= 0:
        return torch.arange(len(labels)), torch.empty(0, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    held = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        take = min(len(members) - 1, max(1, math.floor(fraction * len(members)))) if len(members) >= 2 else 0
        held += members[torch.randperm(len(members), generator=generator)[:take]].tolist()
    held_set = set(held)
    train = torch.tensor([i for i in range(len(labels)) if i not in held_set], dtype=torch.long)
    return train, torch.tensor(sorted(held), dtype=torch.long)


def views_per_image(config: FinetuneConfig, images: int) -> int:
    """Augmented views of each image: ``config.views``, or about ``TARGET_VIEWS`` in all."""
    if config.augment == "none":
        return 1  # every view would be the same
    wanted = config.views or min(32, max(4, TARGET_VIEWS // max(1, images)))
    return max(1, min(wanted, MAX_VIEWS // max(1, images)))


def view_transform(preprocessing: dict[str, Any], augment: str) -> Callable:
    """PIL image -> normalised tensor at the backbone's input size, randomly augmented."""
    from torchvision.transforms import v2

    from fewtune.features.embedding import build_transform

    if augment == "none":
        return build_transform(preprocessing)
    size = tuple(preprocessing["input_size"][1:])
    resize = int(max(size) / preprocessing["crop_pct"])
    steps: list[Any] = [v2.PILToTensor(), v2.Resize(resize, antialias=True)]
    if augment == "light":
        steps += [
            _BorderFillAffine(degrees=10, translate=(0.05, 0.05), scale=(0.9, 1.1), shear=5),
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.85, 1.18), antialias=True),
        ]
    else:
        steps += [
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.TrivialAugmentWide(),
        ]
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(preprocessing["mean"], preprocessing["std"]),
    ]
    return v2.Compose(steps)


class _BorderFillAffine(torch.nn.Module):
    """RandomAffine that fills the uncovered corners with the image's own border colour, so a
    character on white paper doesn't gain black triangles the real images never have."""

    def __init__(self, **kwargs: Any):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        border = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], dim=1)
        fill = border.float().median(dim=1).values.round().tolist()
        return v2.RandomAffine(**self.kwargs, fill=fill)(image)


def make_views(
    backbone: Backbone,
    body: SplitBody,
    pictures: list,
    labels: torch.Tensor,
    augment: str,
    count: int,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen-bottom outputs of ``count`` augmented views of each picture, and their labels."""
    transform = view_transform(backbone.preprocessing, augment)
    items = [(i, v) for i in range(len(pictures)) for v in range(count)]
    chunks = []
    with torch.no_grad():
        for s in range(0, len(items), batch_size):
            batch = torch.stack([transform(pictures[i]) for i, _ in items[s : s + batch_size]])
            chunks.append(body.bottom(batch))
            if advance:
                advance(len(batch))
    return torch.cat(chunks), labels[torch.tensor([i for i, _ in items])]


def view_features(
    body: SplitBody, hidden: torch.Tensor, batch_size: int, advance: Callable[[int], None] | None = None
) -> torch.Tensor:
    chunks = []
    for s in range(0, len(hidden), batch_size):
        chunks.append(body.top(hidden[s : s + batch_size]))
        if advance:
            advance(len(chunks[-1]))
    return torch.cat(chunks)


class seeded:
    """Seed python, numpy and torch for a block (torchvision draws from all of them), then restore."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        self.states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: Any) -> None:
        random.setstate(self.states[0])
        np.random.set_state(self.states[1])
        torch.random.set_rng_state(self.states[2])

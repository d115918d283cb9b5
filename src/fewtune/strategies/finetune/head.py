"""The cosine head: imprinted from class prototypes, then trained on cached features when that is
more accurate on held-out examples (:func:`choose_head`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fewtune.strategies.base import stratified_folds
from fewtune.strategies.finetune.config import FinetuneConfig, parse_unfreeze


class CosineHead(nn.Module):
    """``scale * cos(feature, weight_c)``: imprinted from class prototypes, a cosine classifier
    scores exactly like nearest-prototype before any training (Qi et al. 2018, "Low-shot
    learning with imprinted weights")."""

    def __init__(self, prototypes: torch.Tensor, scale: float = 10.0):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(prototypes.float(), dim=1).clone())
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T


def imprint(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Unit class means of unit features: the head's starting weights. In torch, as
    :func:`fewtune.geometry.class_means` computes them in NumPy: training amplifies the last bit of
    the imprint (through NumPy's rounding, one episode's tuned probabilities moved by up to 0.14)."""
    unit = F.normalize(features.float(), dim=-1)
    return F.normalize(torch.zeros(num_classes, unit.shape[1]).index_add_(0, labels, unit), dim=-1)


def train_head(
    head: CosineHead, features: torch.Tensor, labels: torch.Tensor, config: FinetuneConfig
) -> float:
    """The head's "catch up" phase on cached features, full batch; returns the final loss."""
    if config.head_epochs == 0:
        return math.nan
    optimizer = torch.optim.AdamW(
        [
            {"params": [head.weight], "weight_decay": config.weight_decay},
            {"params": [head.scale], "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.head_epochs))
    features = features.float()
    with torch.enable_grad():
        for _ in range(config.head_epochs):
            loss = F.cross_entropy(head(features), labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return float(loss.detach())


def warmup_cosine(total: int, warmup: float = 0.1) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over the first ``warmup`` of the steps, then cosine to zero."""
    warm = max(1, int(total * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return factor


def fit_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, train: bool, config: FinetuneConfig
) -> CosineHead:
    """A frozen head imprinted from ``features``' class prototypes, trained on them first with ``train``."""
    head = CosineHead(imprint(features, labels, num_classes))
    if train:
        torch.manual_seed(config.seed)
        train_head(head, features, labels, config)
    return head.requires_grad_(False)


def choose_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: FinetuneConfig
) -> tuple[bool, str]:
    """Whether to train the imprinted head, and why: with ``unfreeze="auto"``, when trained heads
    classify more held-out examples right (stratified k-fold, k <= 5)."""
    if config.head_epochs == 0:
        return False, "--head-epochs 0"
    if parse_unfreeze(config.unfreeze) != "auto":
        return True, "set by --unfreeze"
    counts = torch.bincount(labels, minlength=num_classes)
    if int(counts.min()) < 2:
        return False, "one example per class: the imprinted prototypes are kept"
    k = min(5, int(counts.min()))
    fold = torch.from_numpy(stratified_folds(labels.numpy(), num_classes, k, seed=config.seed))
    scores = {}
    for train in (False, True):
        correct = 0
        for f in range(k):
            head = fit_head(features[fold != f], labels[fold != f], num_classes, train, config)
            correct += int((head(features[fold == f]).argmax(1) == labels[fold == f]).sum())
        scores[train] = correct / len(labels)
    trained = scores[True] > scores[False]
    return trained, f"held-out accuracy {scores[True]:.1%} trained vs {scores[False]:.1%} imprinted"

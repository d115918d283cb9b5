"""Fine-tuning: a new head for our classes, trained first alone, then with the top of the body.

The classic transfer-learning pipeline (fastai's ``fine_tune``, the Keras guide), made safe for a
handful of images. Two levels, so the rest of fewtune still sees embeddings:

- :meth:`Finetune.tune` (images): decides whether the body should move at all, and if so trains
  its top stages on augmented views with discriminative learning rates, through a cosine head
  that starts caught up (imprinted from the class prototypes, so step 0 scores like
  ``prototype``) and learns at 10x the top stage's rate. It returns a tuned copy of the backbone
  (the caller's is never modified). The mechanics are in :mod:`fewtune.finetuning`.
- :meth:`Finetune.fit` (embeddings): the final head, imprinted from the class prototypes of the
  (tuned or frozen) features, then trained on the cached features (a fraction of a second) when
  that is more accurate on held-out examples. Adding a class later refits this head from the
  stored embeddings, without touching the body.

Fine-tuning on five photos of ImageNet-like objects can *lose* accuracy (measured: -7 points at
1 shot on Caltech-101) while it gains 10+ points on handwritten characters. So with
``unfreeze="auto"`` the support set decides: the body is tuned only when frozen features leave
room to gain, and the head is trained only when that is more accurate on held-out examples.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fewtune.backbones import Backbone
from fewtune.finetuning import CosineHead, FinetuneConfig, imprint, load_pictures, parse_unfreeze, train_head, tune_body
from fewtune.strategies.base import Strategy, check_support, stratified_folds

#: with 2+ examples per class, the body is tuned when leave-one-out nearest-prototype accuracy on
#: frozen features is below this: above it, on ImageNet-like photos, there is little to gain and
#: the pretrained body to lose.
HEADROOM = 0.95
#: the body is also tuned when the images look unlike ImageNet: the backbone's own ImageNet
#: classifier gives them a mean top-1 probability below this (support images of Caltech-101 5-way
#: tasks: 0.33-0.77; of Omniglot characters: 0.06-0.22). With 1 example per class it is the only
#: signal; at 5 shots, 7 of 20 Omniglot tasks had a perfect-looking leave-one-out score on 25
#: images, and tuning them still gained 5.9 points on their queries.
FAMILIARITY = 0.25
#: stages opened when the body is tuned with ``unfreeze="auto"``: EfficientNet-Lite0's last three
#: block stages with conv_head. On development episodes (Omniglot 5-way 5-shot, seed 1, not the
#: reported ones) top:3 reached 97.0% against 95.3% for top:2, at 27 s against 16 s per task.
AUTO_TOP = 3


class Finetune(Strategy):
    """Cosine head imprinted from prototypes, optionally on a fine-tuned body.

    Args:
        **config: any :class:`~fewtune.finetuning.FinetuneConfig` field (``unfreeze``, ``epochs``,
            ``lr``, ``layer_decay``, ``augment``...).
        head_trained: set when loading a saved classifier (whether :meth:`fit` trained the head).
        tuning: set when loading: what :meth:`tune` chose, for the record.
    """

    name = "finetune"
    needs_images = True

    def __init__(self, head_trained: bool | None = None, tuning: dict[str, Any] | None = None, **config: Any):
        self.config = FinetuneConfig(**config)
        self.head_trained = head_trained
        self.tuning: dict[str, Any] = dict(tuning or {})
        self.head: CosineHead | None = None
        self._report: dict[str, Any] = {}

    # --- images: the body ----------------------------------------------------------------------

    def tune(
        self,
        backbone: Backbone,
        paths: list[Path],
        labels: torch.Tensor,
        features: torch.Tensor,
        num_classes: int,
        *,
        progress: bool = False,
        checkpoint: Path | None = None,
        resume: bool = False,
    ) -> Backbone:
        """Fine-tune the body if it pays, on a copy: returns the backbone to embed with from now on.

        Args:
            paths, labels: the support images and their classes; features: their frozen embeddings.
            checkpoint, resume: see :func:`fewtune.finetuning.tune_body`.
        """
        check_support(features, labels, num_classes)
        top, why = self._choose_body(backbone, features, labels, num_classes)
        self.tuning = {"unfreeze": "none" if top == 0 else ("all" if top is None else f"top:{top}"), "why": why}
        if top == 0:
            return backbone
        train, validation = _validation_split(labels, num_classes, self.config.val_split, self.config.seed)
        pictures = load_pictures(paths)
        tuned = copy.deepcopy(backbone)
        result = tune_body(
            tuned, [pictures[i] for i in train], labels[train], num_classes, self.config, top,
            checkpoint=checkpoint, resume=resume, progress=progress,
            validation=([pictures[i] for i in validation], labels[validation]) if len(validation) else None,
        )  # fmt: skip
        self.tuning["result"] = result.to_dict()
        if result.best_epoch == 0:
            self.tuning["why"] += "; tuning did not beat the frozen body on the validation images, so it was undone"
            return backbone
        return tuned.with_tuned_body()

    def _choose_body(self, backbone: Backbone, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[int | None, str]:
        """How many stages to open (0 = none, None = all), and why."""
        setting = parse_unfreeze(self.config.unfreeze)
        if setting != "auto":
            return {"none": 0, "all": None}.get(setting, setting), "set by --unfreeze"  # type: ignore[return-value]
        familiarity = imagenet_familiarity(backbone, features)
        if int(torch.bincount(labels, minlength=num_classes).min()) >= 2:
            accuracy = leave_one_out_accuracy(features, labels, num_classes)
            if accuracy < HEADROOM:
                return AUTO_TOP, f"frozen features classify {accuracy:.1%} of held-out support images (< {HEADROOM:.0%})"
            if familiarity is not None and familiarity < FAMILIARITY:
                return AUTO_TOP, (
                    f"frozen features classify {accuracy:.1%} of held-out support images, but the images are unlike "
                    f"ImageNet (top-1 probability {familiarity:.2f} < {FAMILIARITY}), where tuning gained on every task measured"
                )
            return 0, f"frozen features already classify {accuracy:.1%} of held-out support images (>= {HEADROOM:.0%})"
        if familiarity is None:
            return 0, "one example per class and no ImageNet classifier to judge the images by: the body stays frozen"
        if familiarity >= FAMILIARITY:
            return 0, f"one example per class of ImageNet-like images (top-1 probability {familiarity:.2f} >= {FAMILIARITY})"
        return AUTO_TOP, f"one example per class of images unlike ImageNet (top-1 probability {familiarity:.2f} < {FAMILIARITY})"

    # --- embeddings: the head ------------------------------------------------------------------

    def fit(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        check_support(features, labels, num_classes)
        train = self.head_trained
        why = "as saved"
        if train is None:
            train, why = self._choose_head(features, labels, num_classes)
        self.head = self._fit_head(features, labels, num_classes, train)
        self.head_trained = train
        self.tuning = self.tuning or {"unfreeze": "none", "why": "fitted on embeddings alone, without the images"}
        self._report = {"body": self.tuning, "head": {"trained": train, "why": why}}

    def _fit_head(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int, train: bool) -> CosineHead:
        head = CosineHead(imprint(features, labels, num_classes))
        if train:
            torch.manual_seed(self.config.seed)
            train_head(head, features, labels, self.config)
        return head.requires_grad_(False)

    def _choose_head(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[bool, str]:
        if self.config.head_epochs == 0:
            return False, "--head-epochs 0"
        if parse_unfreeze(self.config.unfreeze) != "auto":
            return True, "set by --unfreeze"
        counts = torch.bincount(labels, minlength=num_classes)
        if int(counts.min()) < 2:
            return False, "one example per class: the imprinted prototypes are kept"
        k = int(min(5, counts.min()))
        fold = stratified_folds(labels, num_classes, k, seed=self.config.seed)
        scores = {}
        for train in (False, True):
            correct = 0
            for f in range(k):
                head = self._fit_head(features[fold != f], labels[fold != f], num_classes, train)
                correct += int((head(features[fold == f]).argmax(1) == labels[fold == f]).sum())
            scores[train] = correct / len(labels)
        trained = scores[True] > scores[False]
        return trained, f"held-out accuracy {scores[True]:.1%} trained vs {scores[False]:.1%} imprinted"

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("call fit() first")
        return self.head(features.float())

    def fit_report(self) -> dict[str, Any]:
        return dict(self._report)

    def hyperparameters(self) -> dict[str, Any]:
        tuning = dict(self.tuning)
        if "result" in tuning:  # the epoch-by-epoch history is in the fit report; this is for refits
            tuning["result"] = {k: v for k, v in tuning["result"].items() if k != "history"}
        return {**asdict(self.config), "head_trained": self.head_trained, "tuning": tuning}

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.head is None:
            raise RuntimeError("call fit() first")
        return {"weight": self.head.weight.detach(), "scale": self.head.scale.detach().reshape(1)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.head = CosineHead(state["weight"], float(state["scale"][0])).requires_grad_(False)
        self._report = {"body": self.tuning, "head": {"trained": self.head_trained, "why": "as saved"}}


def leave_one_out_accuracy(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Nearest-prototype accuracy of each support example against prototypes built without it."""
    unit = F.normalize(features.float(), dim=1)
    sums = torch.zeros(num_classes, unit.shape[1]).index_add_(0, labels, unit)
    similarity = unit @ F.normalize(sums, dim=1).T
    own = sums[labels] - unit  # each example's class mean without it
    similarity[torch.arange(len(labels)), labels] = (unit * F.normalize(own, dim=1)).sum(1)
    return float((similarity.argmax(1) == labels).float().mean())


def imagenet_familiarity(backbone: Backbone, features: torch.Tensor) -> float | None:
    """Mean top-1 probability the backbone's ImageNet classifier gives the images (from their
    pooled features), or None when the network has no classifier."""
    classifier = backbone.model.get_classifier()
    if not isinstance(classifier, torch.nn.Linear) or classifier.in_features != features.shape[1]:
        return None
    with torch.no_grad():
        return float(classifier(features.float()).softmax(1).max(1).values.mean())


def _validation_split(labels: torch.Tensor, num_classes: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    return torch.tensor([i for i in range(len(labels)) if i not in held_set], dtype=torch.long), torch.tensor(sorted(held), dtype=torch.long)


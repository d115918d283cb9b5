"""Fine-tuning: a new head for our classes, trained first alone, then with the top of the body.

The classic transfer-learning pipeline (fastai's ``fine_tune``, the Keras guide), made safe for a
handful of images. Two levels, so the rest of fewtune still sees embeddings:

- :meth:`Finetune.tune` (images): decides whether the body should move at all, and if so trains
  its top stages on augmented views with discriminative learning rates, through a cosine head
  that starts caught up (imprinted from the class prototypes, so step 0 scores like
  ``prototype``) and learns at 10x the top stage's rate. It returns a tuned copy of the backbone
  (the caller's is never modified). The mechanics are in :mod:`fewtune.strategies.finetuning`.
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
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from fewtune.features.backbones import Backbone
from fewtune.features.embedding import embed_images
from fewtune.strategies.finetuning import CosineHead, FinetuneConfig, imprint, load_pictures, parse_unfreeze, train_head, tune_body
from fewtune.geometry import leave_one_out_similarity
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
#: ``auto`` with one example in a class has no held-out images to check a tune against, so it
#: tunes only when the images are very far from ImageNet (see :meth:`Finetune._choose_body`)
FAMILIARITY_ONE_SHOT = 0.15


class Finetune(Strategy):
    """Cosine head imprinted from prototypes, optionally on a fine-tuned body.

    Args:
        **config: any :class:`~fewtune.strategies.finetuning.FinetuneConfig` field (``unfreeze``, ``epochs``,
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
        #: logits of the images held out of the cross-fitted tune (see :meth:`tune`), for calibration
        self._cross_fit: tuple[torch.Tensor, torch.Tensor] | None = None

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
        require_gain: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> Backbone:
        """Fine-tune the body if it pays, on a copy: returns the backbone to embed with from now on.

        With 2+ images in every class the body is first tuned on half of each class's images and
        the other half is classified (a cross-fitted tune). Those held-out predictions fit the
        temperature (see :meth:`held_out`): predictions of the fully tuned model's own support
        images are near-certain and would teach the calibration nothing. With ``require_gain``
        (what ``auto`` asks), the body is then tuned on every image only when the cross-fitted
        tune classified more held-out images right than the better of ``probe`` and ``prototype``
        fitted on the same half of frozen embeddings.

        Args:
            paths, labels: the support images and their classes; features: their frozen embeddings.
            checkpoint, resume: see :func:`fewtune.strategies.finetuning.tune_body`.
            require_gain: keep the pretrained body unless held-out evidence says tuning pays.
            notify: called with a one-line message before the slow work starts (the time it will take).
        """
        check_support(features, labels, num_classes)
        self._cross_fit = None
        top, why = self._choose_body(backbone, features, labels, num_classes, require_gain)
        self.tuning = {"unfreeze": "none" if top == 0 else ("all" if top is None else f"top:{top}"), "why": why}
        if top == 0:
            return backbone
        can_cross_fit = int(torch.bincount(labels, minlength=num_classes).min()) >= 2
        if notify is not None:
            runs = 2 if can_cross_fit else 1
            notify(f"fine-tuning: {why}; about {runs * estimate_tune_seconds(backbone, self.config, len(paths)):.0f} s")
        pictures = load_pictures(paths)
        if can_cross_fit:
            evidence = self._cross_fitted_tune(backbone, pictures, labels, features, num_classes, top, progress)
            self.tuning["cross_fit"] = evidence
            if require_gain and evidence["tuned_correct"] <= evidence["frozen_correct"]:
                self.tuning.update(unfreeze="none", why=(
                    f"{why}; but a body tuned on half of each class classified {evidence['tuned_correct']} of the other "
                    f"{evidence['held_out']} images right, against {evidence['frozen_correct']} for frozen features: kept frozen"
                ))  # fmt: skip
                self._cross_fit = None
                return backbone
            if require_gain:
                self.tuning["why"] += (
                    f"; a body tuned on half of each class classified {evidence['tuned_correct']} of the other "
                    f"{evidence['held_out']} images right, against {evidence['frozen_correct']} for frozen features"
                )
        train, validation = _validation_split(labels, num_classes, self.config.val_split, self.config.seed)
        tuned = copy.deepcopy(backbone)
        result = tune_body(
            tuned, [pictures[i] for i in train], labels[train], num_classes, self.config, top,
            checkpoint=checkpoint, resume=resume, progress=progress,
            validation=([pictures[i] for i in validation], labels[validation]) if len(validation) else None,
        )  # fmt: skip
        self.tuning["result"] = result.to_dict()
        if result.best_epoch == 0:
            self.tuning["why"] += "; tuning did not beat the frozen body on the validation images, so it was undone"
            self._cross_fit = None
            return backbone
        return tuned.with_tuned_body()

    def _cross_fitted_tune(
        self, backbone: Backbone, pictures: list, labels: torch.Tensor, features: torch.Tensor, num_classes: int,
        top: int | None, progress: bool,
    ) -> dict[str, Any]:  # fmt: skip
        """Tune a copy on one half of each class, classify the other half with it and with frozen
        features; keeps the tuned model's held-out logits for calibration."""
        from fewtune.strategies.probe import Probe
        from fewtune.strategies.prototype import Prototype

        fold = stratified_folds(labels, num_classes, 2, seed=self.config.seed)
        train, held = (fold == 0).nonzero().flatten(), (fold == 1).nonzero().flatten()
        copy_ = copy.deepcopy(backbone)
        tune_body(copy_, [pictures[i] for i in train], labels[train], num_classes, self.config, top, progress=progress)
        tuned_train = embed_images(copy_, [pictures[i] for i in train])
        tuned_held = embed_images(copy_, [pictures[i] for i in held])
        trained, _ = self._choose_head(tuned_train, labels[train], num_classes)
        logits = self._fit_head(tuned_train, labels[train], num_classes, trained)(tuned_held).detach()
        frozen = {}
        for candidate in (Probe(), Prototype()):
            candidate.fit(features[train], labels[train], num_classes)
            frozen[candidate.name] = int((candidate.logits(features[held]).argmax(1) == labels[held]).sum())
        self._cross_fit = (logits, labels[held])
        return {
            "held_out": len(held),
            "tuned_correct": int((logits.argmax(1) == labels[held]).sum()),
            "frozen_correct": max(frozen.values()),
            "frozen_correct_by_strategy": frozen,
        }

    def _choose_body(
        self, backbone: Backbone, features: torch.Tensor, labels: torch.Tensor, num_classes: int, require_gain: bool = False
    ) -> tuple[int | None, str]:
        """How many stages to open (0 = none, None = all), and why: the stages worth a
        cross-fitted tune with ``require_gain``, which then has the last word."""
        setting = parse_unfreeze(self.config.unfreeze)
        if setting != "auto":
            return {"none": 0, "all": None}.get(setting, setting), "set by --unfreeze"  # type: ignore[return-value]
        familiarity = imagenet_familiarity(backbone, features)
        if require_gain and int(torch.bincount(labels, minlength=num_classes).min()) < 2:
            if familiarity is not None and familiarity < FAMILIARITY_ONE_SHOT:
                return AUTO_TOP, (
                    f"one example per class of images far from ImageNet (top-1 probability {familiarity:.2f} < "
                    f"{FAMILIARITY_ONE_SHOT}), where tuning gained on every task measured"
                )
            return 0, (
                "a class has one example: nothing to hold out to check that tuning pays"
                + (f", and the images are not far enough from ImageNet (top-1 probability {familiarity:.2f} >= {FAMILIARITY_ONE_SHOT})" if familiarity is not None else "")
            )
        if int(torch.bincount(labels, minlength=num_classes).min()) >= 2:
            accuracy = leave_one_out_accuracy(features, labels, num_classes)
            if require_gain and familiarity is not None and familiarity >= FAMILIARITY:
                # ImageNet-like photos: on Caltech-101 5-way 5-shot tasks the cross-fitted tune that a
                # leave-one-out score below HEADROOM started cost ~18 s a task and kept the frozen
                # body every time (docs/benchmarks.md, "The default path")
                return 0, (
                    f"ImageNet-like images (top-1 probability {familiarity:.2f} >= {FAMILIARITY}): frozen features "
                    f"classify {accuracy:.1%} of held-out support images; --strategy finetune tunes anyway"
                )
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

    def held_out(self, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        """When the body was tuned, predictions of the images held out of the cross-fitted tune
        (the support features themselves were trained on); otherwise the head's own held-out ones."""
        if self.tuning.get("result") is None:
            return super().held_out(features, labels, num_classes)
        if self._cross_fit is not None and self._cross_fit[0].shape[1] == num_classes:
            logits, truth = self._cross_fit
            return logits, truth, "predictions of support images held out of a cross-fitted fine-tune"
        return None  # a tuned body with one example in a class, or classes changed since tuning

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("call fit() first")
        return self.head(features.float())

    @property
    def body_tuned(self) -> bool:
        return self.tuning.get("result") is not None

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
    return float((leave_one_out_similarity(features, labels, num_classes).argmax(1) == labels).float().mean())


def estimate_tune_seconds(backbone: Backbone, config: FinetuneConfig, images: int) -> float:
    """Rough seconds for one :func:`~fewtune.strategies.finetuning.tune_body` on this machine: a timed
    forward of a small batch, scaled by the views and steps the config implies (each step's
    forward and backward through the open stages counted as two full forwards: on a Caltech and
    an Omniglot task this came within 1.5x of the time taken)."""
    from fewtune.strategies.finetuning import TARGET_STEPS, views_per_image

    size = backbone.preprocessing.get("input_size", (3, 224, 224))
    batch = torch.zeros(4, *size).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    backbone.embed(batch)
    per_image = (time.perf_counter() - started) / 4
    views = views_per_image(config, images) * images
    return per_image * (views + 2 * TARGET_STEPS * config.batch_size)


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


"""Fine-tuning: a new head for our classes, trained first alone, then with the top of the body.

The classic transfer-learning pipeline (fastai's ``fine_tune``, the Keras guide), made safe for a
handful of images. Two levels, so the rest of fewtune still sees embeddings:

- :meth:`Finetune.tune` (images): decides whether the body should move at all, and if so trains
  its top stages on augmented views with discriminative learning rates, through a cosine head
  that starts caught up (imprinted from the class prototypes, so step 0 scores like
  ``prototype``) and learns at 10x the top stage's rate. It returns a tuned copy of the backbone
  (the caller's is never modified). The mechanics are in the other modules of this package.
- :meth:`Finetune.fit` (embeddings): the final head, imprinted from the class prototypes of the
  (tuned or frozen) features, then trained on the cached features (a fraction of a second) when
  that is more accurate on held-out examples. Adding a class later refits this head from the
  stored embeddings, without touching the body.

With ``unfreeze="auto"`` the support set decides: the body is tuned only when frozen features
leave room to gain (:mod:`fewtune.strategies.finetune.decision`), and the head is trained only
when that is more accurate on held-out examples.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.strategies.base import Strategy, check_support, stratified_folds
from fewtune.strategies.finetune import decision
from fewtune.strategies.finetune.config import FinetuneConfig
from fewtune.strategies.finetune.decision import estimate_tune_seconds

if TYPE_CHECKING:
    from fewtune.features.backbones import Backbone
    from fewtune.strategies.finetune.head import CosineHead

# torch and the training modules are imported where they are used: ``auto`` reaches this class
# on every ``train``, and on most data decides from cached embeddings alone not to tune.

#: The temperature of a body tuned with one example in a class (nothing of the task is held out to
#: fit one): its cosine head learnt from augmented views of a single picture and is over-confident
#: at its own scale: on Omniglot 5-way 1-shot development episodes (seed 0, 24 tuned tasks) it was
#: 88.9% confident and 84.1% right. Pooled ECE 5.4 at T = 1 against 3.4 at this temperature, the one
#: constant that fits their pooled test predictions best (``bench/tuned_temperature.py --shot 1``).
TUNED_ONE_SHOT_TEMPERATURE = 1.25


class Finetune(Strategy):
    """Cosine head imprinted from prototypes, optionally on a fine-tuned body.

    Args:
        **config: any :class:`~fewtune.strategies.finetune.config.FinetuneConfig` field
            (``unfreeze``, ``epochs``, ``lr``, ``layer_decay``, ``augment``...).
        head_trained: set when loading a saved classifier (whether :meth:`fit` trained the head).
        tuning: set when loading: what :meth:`tune` chose, for the record.
    """

    name = "finetune"

    def __init__(self, head_trained: bool | None = None, tuning: dict[str, Any] | None = None, **config: Any):
        self.config = FinetuneConfig(**config)
        self.head_trained = head_trained
        self.tuning: dict[str, Any] = dict(tuning or {})
        self.head: CosineHead | None = None
        self._report: dict[str, Any] = {}

    # --- images: the body ----------------------------------------------------------------------

    @property
    def learns_from_images(self) -> bool:
        return True

    def adapt(
        self,
        backbone: Backbone,
        paths: list[Path],
        labels: np.ndarray,
        features: np.ndarray,
        num_classes: int,
        *,
        progress: bool = False,
        checkpoint: Path | None = None,
        resume: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> Backbone:
        """:meth:`tune` as ``--strategy finetune`` does it: the support set decides, without
        asking the cross-fitted tune to beat frozen features."""
        return self.tune(
            backbone, paths, labels, features, num_classes,
            progress=progress, checkpoint=checkpoint, resume=resume, notify=notify,
        )  # fmt: skip

    def tune(
        self,
        backbone: Backbone,
        paths: list[Path],
        labels: np.ndarray,
        features: np.ndarray,
        num_classes: int,
        *,
        progress: bool = False,
        checkpoint: Path | None = None,
        resume: bool = False,
        require_gain: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> Backbone:
        """Fine-tune the body if it pays, on a copy: returns the backbone to embed with from now on.

        With ``require_gain`` (what ``auto`` asks) and 2+ images in every class, the body is first
        tuned on half of each class's images and the other half is classified (a cross-fitted
        tune); the body is then tuned on every image only when that classified more held-out
        images right than the better of ``probe`` and ``prototype`` fitted on the same half of
        frozen embeddings. Images far from ImageNet and look-alike classes skip that check (see
        :func:`~fewtune.strategies.finetune.decision.tune_without_check`). Without
        ``require_gain`` (``--strategy finetune``) the support set's rule alone decides, at the
        cost of one tune.

        Args:
            paths, labels: the support images and their classes; features: their frozen embeddings.
            checkpoint, resume: see :func:`fewtune.strategies.finetune.loop.tune_body`.
            require_gain: keep the pretrained body unless held-out evidence says tuning pays.
            notify: called with a one-line message before the slow work starts (the time it will take).
        """
        check_support(features, labels, num_classes)
        top, why = decision.choose_body(self.config, backbone, features, labels, num_classes, require_gain)
        self.tuning = {
            "unfreeze": "none" if top == 0 else ("all" if top is None else f"top:{top}"),
            "why": why,
        }
        if top == 0:
            return backbone
        fewest = int(np.bincount(labels, minlength=num_classes).min())
        cross_fit = require_gain and fewest >= 2
        unchecked = decision.tune_without_check(backbone, features, labels) if cross_fit else None
        if unchecked is not None:  # the check would only veto tunes that pay
            cross_fit = False
            self.tuning["why"] += f"; {unchecked}: tuned without a cross-fitted check"
        if notify is not None:
            runs = 2 if cross_fit else 1
            seconds = runs * estimate_tune_seconds(backbone, self.config, len(paths))
            notify(f"fine-tuning: {why}; about {seconds:.0f} s")
        import torch

        from fewtune.strategies.finetune.loop import tune_body
        from fewtune.strategies.finetune.views import load_pictures, validation_split

        pictures = load_pictures(paths)
        if cross_fit:
            evidence = self._cross_fitted_tune(
                backbone, pictures, labels, features, num_classes, top, progress
            )
            self.tuning["cross_fit"] = evidence
            compared = (
                f"a body tuned on half of each class classified {evidence['tuned_correct']} of the "
                f"other {evidence['held_out']} images right, against {evidence['frozen_correct']} "
                "for frozen features"
            )
            if evidence["tuned_correct"] <= evidence["frozen_correct"]:
                self.tuning.update(unfreeze="none", why=f"{why}; but {compared}: kept frozen")
                return backbone
            self.tuning["why"] += f"; {compared}"
        targets = torch.tensor(labels, dtype=torch.long)
        train, validation = validation_split(targets, num_classes, self.config.val_split, self.config.seed)
        tuned = copy.deepcopy(backbone)
        result = tune_body(
            tuned, [pictures[i] for i in train], targets[train], num_classes, self.config, top,
            checkpoint=checkpoint, resume=resume, progress=progress,
            validation=([pictures[i] for i in validation], targets[validation]) if len(validation) else None,
        )  # fmt: skip
        self.tuning["result"] = result.to_dict()
        self.tuning["fewest_examples"] = fewest
        if result.best_epoch == 0:
            self.tuning["why"] += (
                "; tuning did not beat the frozen body on the validation images, so it was undone"
            )
            return backbone
        return tuned.with_tuned_body()

    def _cross_fitted_tune(
        self,
        backbone: Backbone,
        pictures: list,
        labels: np.ndarray,
        features: np.ndarray,
        num_classes: int,
        top: int | None,
        progress: bool,
    ) -> dict[str, Any]:
        """Tune a copy on one half of each class, classify the other half with it and with frozen
        features."""
        import torch

        from fewtune.features.embedding import embed_images
        from fewtune.strategies.finetune.head import choose_head, fit_head
        from fewtune.strategies.finetune.loop import tune_body
        from fewtune.strategies.probe import Probe
        from fewtune.strategies.prototype import Prototype

        fold = stratified_folds(labels, num_classes, 2, seed=self.config.seed)
        train, held = np.flatnonzero(fold == 0), np.flatnonzero(fold == 1)
        targets = torch.tensor(labels[train], dtype=torch.long)
        copy_, train_pictures = copy.deepcopy(backbone), [pictures[i] for i in train]
        tune_body(copy_, train_pictures, targets, num_classes, self.config, top, progress=progress)
        tuned_train = torch.from_numpy(embed_images(copy_, train_pictures))
        tuned_held = torch.from_numpy(embed_images(copy_, [pictures[i] for i in held]))
        trained, _ = choose_head(tuned_train, targets, num_classes, self.config)
        logits = (
            fit_head(tuned_train, targets, num_classes, trained, self.config)(tuned_held).detach().numpy()
        )
        frozen = {}
        for candidate in (Probe(), Prototype()):
            candidate.fit(features[train], labels[train], num_classes)
            frozen[candidate.name] = int((candidate.logits(features[held]).argmax(1) == labels[held]).sum())
        return {
            "held_out": len(held),
            "tuned_correct": int((logits.argmax(1) == labels[held]).sum()),
            "frozen_correct": max(frozen.values()),
            "frozen_correct_by_strategy": frozen,
        }

    # --- embeddings: the head ------------------------------------------------------------------

    def fit(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        import torch

        from fewtune.strategies.finetune.head import choose_head, fit_head

        check_support(features, labels, num_classes)
        x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(labels, dtype=torch.long)
        train = self.head_trained
        why = "as saved"
        if train is None:
            train, why = choose_head(x, y, num_classes, self.config)
        self.head = fit_head(x, y, num_classes, train, self.config)
        self.head_trained = train
        self.tuning = self.tuning or {
            "unfreeze": "none",
            "why": "fitted on embeddings alone, without the images",
        }
        self._report = {"body": self.tuning, "head": {"trained": train, "why": why}}

    def logits(self, features: np.ndarray) -> np.ndarray:
        import torch

        if self.head is None:
            raise RuntimeError("call fit() first")
        with torch.no_grad():
            return self.head(torch.tensor(features, dtype=torch.float32)).numpy()

    @property
    def body_tuned(self) -> bool:
        return self.tuning.get("result") is not None

    def tuned_body_temperature(self) -> float:
        """Above 1 when the body was tuned with one example in a class: its cosine head learnt from
        augmented views of a single picture and is over-confident at its own scale."""
        return TUNED_ONE_SHOT_TEMPERATURE if self.tuning.get("fewest_examples", 2) < 2 else 1.0

    def one_shot_temperature(self, features: np.ndarray, labels: np.ndarray) -> float:
        """With the pretrained body and the imprinted head (what one example a class gets), the
        logits are ``prototype``'s (scale 10 = 1 / its 0.1), and so is the temperature; else 1."""
        from fewtune.strategies.prototype import Prototype

        prototype = Prototype()
        same_logits = self.head is not None and float(self.head.scale) == 1 / prototype.temperature
        if self.head_trained or self.body_tuned or not same_logits:
            return 1.0
        return prototype.one_shot_temperature(features, labels)

    def fit_report(self) -> dict[str, Any]:
        return dict(self._report)

    def hyperparameters(self) -> dict[str, Any]:
        tuning = dict(self.tuning)
        if "result" in tuning:  # the epoch-by-epoch history is in the fit report; this is for refits
            tuning["result"] = {k: v for k, v in tuning["result"].items() if k != "history"}
        return {**asdict(self.config), "head_trained": self.head_trained, "tuning": tuning}

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.head is None:
            raise RuntimeError("call fit() first")
        return {
            "weight": self.head.weight.detach().numpy().copy(),
            "scale": self.head.scale.detach().reshape(1).numpy().copy(),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        import torch

        from fewtune.strategies.finetune.head import CosineHead

        weight = torch.tensor(state["weight"], dtype=torch.float32)
        self.head = CosineHead(weight, float(state["scale"][0])).requires_grad_(False)
        self._report = {"body": self.tuning, "head": {"trained": self.head_trained, "why": "as saved"}}

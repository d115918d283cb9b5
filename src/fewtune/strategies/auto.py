"""Let the support set choose the strategy: the one whose held-out predictions are best."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewtune.strategies.base import Strategy, check_support

if TYPE_CHECKING:
    from fewtune.features.backbones import Backbone


class Auto(Strategy):
    """Fits every candidate and keeps the most accurate on held-out support examples.

    Held-out accuracy comes from each candidate's own :meth:`Strategy.held_out_accuracy` (exact
    leave-one-out for ``prototype``, the cross-validation folds for ``probe``), so the choice
    uses the training data only; ties go to the earlier candidate. With one example per class
    nothing can be held out, and ``probe`` is kept when it is a candidate: at 1 shot it matched or
    beat ``prototype`` in every setting measured (600 episodes each: +0.2 points on Caltech-101
    5-way, +0.7 on Omniglot 5-way, +2.0 on Omniglot 20-way; see docs/benchmarks.md).

    With ``finetune`` among the candidates (the default), :meth:`adapt` first asks whether tuning
    the body could pay at all (images unlike ImageNet, or frozen features short of 95% held-out
    accuracy); on everyday photos it does not, and ``auto`` costs what it did without it. Otherwise
    a body is tuned on half of each class and must classify the other half better than frozen
    features do; only then is the body tuned on every image and ``finetune`` kept.

    Args:
        candidates: strategy names to choose among, the one to keep on a tie first.
        chosen, chosen_hyperparameters: set when loading a saved classifier.
    """

    name = "auto"

    def __init__(
        self,
        candidates: list[str] | tuple[str, ...] = ("probe", "prototype", "finetune"),
        chosen: str | None = None,
        chosen_hyperparameters: dict[str, Any] | None = None,
    ):
        from fewtune.strategies import STRATEGIES

        unknown = [c for c in candidates if c not in STRATEGIES or c == self.name]
        if unknown or not candidates:
            names = ", ".join(n for n in STRATEGIES if n != self.name)
            raise ValueError(f"candidates must be among {names}; got {list(candidates)}")
        self.candidates = list(candidates)
        self.chosen: Strategy | None = (
            STRATEGIES[chosen](**(chosen_hyperparameters or {})) if chosen else None
        )
        self._report: dict[str, Any] = {}
        self._tuned: Strategy | None = None  # a Finetune whose tune() kept a tuned body
        self._tuning: dict[str, Any] | None = None  # why the body was (not) tuned
        if (
            self.chosen is not None and self.chosen.name == "finetune"
        ):  # loaded: the body stays tuned on refits
            self._tuned, self._tuning = self.chosen, dict(getattr(self.chosen, "tuning", {}))

    @property
    def learns_from_images(self) -> bool:
        return "finetune" in self.candidates

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
        """Tune the body only where held-out evidence says it pays (see the class docstring);
        never without ``finetune`` among the candidates."""
        from fewtune.strategies.finetune import Finetune

        if not self.learns_from_images:
            return backbone

        finetune = Finetune()
        tuned = finetune.tune(
            backbone, paths, labels, features, num_classes,
            progress=progress, checkpoint=checkpoint, resume=resume, require_gain=True, notify=notify,
        )  # fmt: skip
        self._tuned = finetune if tuned is not backbone else None
        self._tuning = dict(finetune.tuning)
        return tuned

    def fit(self, features: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
        from fewtune.strategies import STRATEGIES

        check_support(features, labels, num_classes)
        tuning = {"fine-tuning": self._tuning} if self._tuning is not None else {}
        if self._tuned is not None:  # adapt() kept a tuned body: these features come from it
            self.chosen = self._tuned
            self.chosen.fit(features, labels, num_classes)
            self._report = {
                "chosen": "finetune",
                "why": self._tuning["why"] if self._tuning else "",
                **self.chosen.fit_report(),
            }
            return
        frozen = [c for c in self.candidates if c != "finetune"] or ["probe"]
        if int(np.bincount(labels, minlength=num_classes).min()) < 2:
            name = "probe" if "probe" in frozen else frozen[0]
            self.chosen = STRATEGIES[name]()
            self.chosen.fit(features, labels, num_classes)
            self._report = {
                "chosen": name,
                "why": "a class has one example: nothing to hold out; the strategy measured best at 1 shot",
                **tuning,
                **self.chosen.fit_report(),
            }
            return
        scores, fitted = {}, {}
        for name in frozen:
            candidate = STRATEGIES[name]()
            candidate.fit(features, labels, num_classes)
            scores[name] = round(candidate.held_out_accuracy(features, labels, num_classes), 4)
            fitted[name] = candidate
        best = max(frozen, key=lambda n: scores[n])  # max keeps the first of equals
        self.chosen = fitted[best]
        self._report = {
            "chosen": best,
            "why": "most accurate on held-out support examples",
            "held_out_accuracy": scores,
            **tuning,
            **self.chosen.fit_report(),
        }

    def _require(self) -> Strategy:
        if self.chosen is None:
            raise RuntimeError("call fit() first")
        return self.chosen

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self._require().logits(features)

    def held_out_logits(
        self, features: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> np.ndarray | None:
        return self._require().held_out_logits(features, labels, num_classes)

    def held_out(
        self, features: np.ndarray, labels: np.ndarray, num_classes: int
    ) -> tuple[np.ndarray, np.ndarray, str] | None:
        return self._require().held_out(features, labels, num_classes)

    def one_shot_temperature(self, features: np.ndarray, labels: np.ndarray) -> float:
        return 1.0 if self.chosen is None else self.chosen.one_shot_temperature(features, labels)

    @property
    def body_tuned(self) -> bool:
        return self.chosen is not None and self.chosen.body_tuned

    def tuned_body_temperature(self) -> float:
        return 1.0 if self.chosen is None else self.chosen.tuned_body_temperature()

    def fit_report(self) -> dict[str, Any]:
        return dict(self._report)

    def hyperparameters(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "candidates": self.candidates,
            "chosen": chosen.name if chosen else None,
            "chosen_hyperparameters": chosen.hyperparameters() if chosen else None,
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        return self._require().state_dict()

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._require().load_state_dict(state)

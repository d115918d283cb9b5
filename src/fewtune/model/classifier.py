"""A trained classifier: a backbone and a head, saved as a folder with no pickle.

Saving and loading live in :mod:`fewtune.storage.saved_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewtune._version import __version__
from fewtune.data.inputs import ImageInput, embed_items, expand
from fewtune.features.backbones import Backbone
from fewtune.model.head import Embeddings, Head, check_class_names
from fewtune.model.openset import DEFAULT_UNKNOWN_LABEL as DEFAULT_UNKNOWN_LABEL
from fewtune.model.openset import OpenSet as OpenSet
from fewtune.model.prediction import Prediction as Prediction
from fewtune.storage.schema import FORMAT, FORMAT_VERSION
from fewtune.strategies import Strategy


@dataclass(repr=False)
class Classifier:
    """Classifies images into ``classes``; build one with :func:`fewtune.train` or :func:`fewtune.load`.

    A classifier is a :class:`Backbone` and a :class:`~fewtune.model.head.Head`: it turns inputs
    into embeddings and hands them to the head, which answers. When a strategy fine-tuned the
    body, ``backbone`` is the tuned one and ``pretrained`` the one it came from: novelty ("none
    of these") is measured on the pretrained network's embeddings (see :mod:`fewtune.model.openset`).

    Attributes:
        training: summary of the data it was trained on (counts, skipped files, duplicates...).
    """

    backbone: Backbone
    head: Head
    pretrained: Backbone | None = None
    training: dict[str, Any] = field(default_factory=dict)

    # what a user asks of a classifier, answered by its head
    @property
    def classes(self) -> list[str]:
        return self.head.classes

    @property
    def classes_(self) -> np.ndarray:
        """The class names as scikit-learn names them: the columns of :meth:`predict_proba`."""
        return np.array(self.classes, dtype=object)

    @property
    def strategy(self) -> Strategy:
        return self.head.strategy

    @property
    def fit_report(self) -> dict[str, Any]:
        return self.head.fit_report

    @property
    def temperature(self) -> float:
        return self.head.temperature

    @property
    def calibration(self) -> dict[str, Any]:
        return self.head.calibration

    @property
    def open_set(self) -> OpenSet:
        return self.head.open_set

    def __repr__(self) -> str:
        """One line: a dataclass repr would print every support embedding (18 KB)."""
        shown = ", ".join(repr(c) for c in self.classes[:5])
        if len(self.classes) > 5:
            shown += f", ... ({len(self.classes)} in all)"
        chosen = self.fit_report.get("chosen")
        strategy = f"{self.strategy.name!r}" + (f" (chose {chosen!r})" if chosen else "")
        return (
            f"Classifier(strategy={strategy}, classes=[{shown}], backbone={self.backbone.name!r}, "
            f"examples={len(self.head.labels)})"
        )

    def embed(
        self, inputs: ImageInput | Sequence[ImageInput], *, skip_bad: bool = False, progress: bool = False
    ) -> tuple[Embeddings, list[int]]:
        """The inputs' embeddings as the head takes them, and the indices (into
        ``expand(inputs)``) of the images kept: all unless ``skip_bad``."""
        return self._embed(expand(inputs), skip_bad=skip_bad, progress=progress)

    def _embed(
        self, items: list[Any], *, skip_bad: bool = False, progress: bool = False
    ) -> tuple[Embeddings, list[int]]:
        features, kept = embed_items(self.backbone, items, skip_bad=skip_bad, progress=progress)
        position = {id(item): i for i, item in enumerate(items)}
        indices = [position[id(item)] for item in kept]
        if self.pretrained is None:
            return Embeddings.frozen(features), indices
        pretrained, _ = embed_items(self.pretrained, kept, progress=progress)
        return Embeddings(features, pretrained), indices

    def predict(
        self,
        inputs: ImageInput | Sequence[ImageInput],
        top_k: int = 1,
        *,
        skip_bad: bool = False,
        progress: bool = False,
        open_set: bool | None = None,
        unknown_threshold: float | None = None,
        unknown_label: str | None = None,
        transductive: bool | str = False,
    ) -> list[Prediction]:
        """Classify images: files, folders, glob patterns, or pictures in memory.

        Args:
            inputs: one of, or a list mixing: a path, a folder (recursive), a glob, a ``PIL.Image``,
                a NumPy H x W x C (or H x W) uint8 array, a torch C x H x W tensor (uint8, or float in
                [0, 1]). Results are in input order; a picture in memory is named ``<image N>``.
            skip_bad: leave unreadable files out of the result instead of raising.
            open_set, unknown_threshold, unknown_label: override the saved :class:`OpenSet` settings.
            transductive: classify the inputs together, with the classes refined on them: ``True``,
                or ``"balanced"`` when the inputs hold about as many images of each class (see
                :mod:`fewtune.model.transduction`); best for a batch of many unlabelled images.
        """
        items = expand(inputs)
        batch, kept = self._embed(items, skip_bad=skip_bad, progress=progress)
        return self.head.predict(
            batch,
            [items[i].name for i in kept],
            top_k,
            open_set=open_set,
            unknown_threshold=unknown_threshold,
            unknown_label=unknown_label,
            transductive=transductive,
        )

    def predict_proba(self, inputs: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """(n, num_classes) calibrated probabilities, columns in the order of ``classes_``.

        Takes what :meth:`predict` takes; one row per image, in input order (a folder gives a row per file).
        """
        features, _ = embed_items(self.backbone, expand(inputs))
        return self.head.probabilities(features)

    def add_examples(
        self, label: str, inputs: ImageInput | Sequence[ImageInput], *, progress: bool = False
    ) -> int:
        """Add a class from one or more examples, or more examples to a class, and refit.

        Exact for ``prototype``; ``probe`` refits its head on the stored embeddings, in seconds.
        Returns how many images were added.
        """
        check_class_names([*self.classes, label], self.open_set.unknown_label)
        batch, kept = self.embed(inputs, progress=progress)
        self.head.add(label, batch)
        self.training.setdefault("per_class", {})[label] = self.head.counts()[label]
        return len(kept)

    def remove_class(self, label: str) -> None:
        """Forget a class and its examples, and refit on the rest."""
        self.head.remove(label)
        self.training.get("per_class", {}).pop(label, None)

    def config(self) -> dict[str, Any]:
        """Everything that describes this classifier, as saved in ``config.json``."""
        head = self.head
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fewtune_version": __version__,
            "classes": list(head.classes),
            "backbone": {
                "name": self.backbone.name,
                "timm_name": self.backbone.timm_name,
                "weights_sha256": self.backbone.weights_sha256,
                "weights_source": self.backbone.weights_source,
                "embedding_dim": self.backbone.dim,
                "tuned_sha256": self.backbone.tuned_sha256,
            },
            "preprocessing": self.backbone.preprocessing,
            "strategy": {
                "name": head.strategy.name,
                "hyperparameters": head.strategy.hyperparameters(),
                "fit": head.fit_report,
            },
            "calibration": {**head.calibration, "temperature": head.temperature},
            "open_set": {
                "enabled": head.open_set.enabled,
                "threshold": head.open_set.threshold,
                "unknown_label": head.open_set.unknown_label,
                "calibration": head.open_set.calibration,
            },
            "training": self.training,
        }

    def save(self, path: str | Path) -> Path:
        """Write the classifier folder under the model's lock, replacing any previous one in one
        step: a reader, or a crash at any point, sees the whole old model or the whole new one
        (see :mod:`fewtune.storage.saved_model`)."""
        from fewtune.storage import saved_model

        return saved_model.save(self, path)


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and check a saved classifier's ``config.json`` without loading any network."""
    from fewtune.storage import saved_model

    return saved_model.read_config(path)


def load(path: str | Path, backbone: Backbone | None = None) -> Classifier:
    """Load a saved classifier (see :func:`fewtune.storage.saved_model.load`); nothing in the
    folder can run code.

    Args:
        backbone: reuse an already-built backbone; it must have the same weights hash.
    """
    from fewtune.storage import saved_model

    return saved_model.load(path, backbone)

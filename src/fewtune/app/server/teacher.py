"""What the server has been taught: the examples' embeddings per label, the source of truth, and
the classifier built from them. Every change builds a new :class:`Classifier` to the side and swaps
it in under a lock, so a request never sees a half-updated model."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from fewtune.app.server.config import ServerConfig
from fewtune.features.backbones import Backbone
from fewtune.model.classifier import Classifier
from fewtune.model.head import Embeddings, Head
from fewtune.strategies import create_strategy


class Teacher:
    """The taught examples and the classifier built from them (None until two classes exist)."""

    def __init__(self, backbone: Backbone, config: ServerConfig, classifier: Classifier | None = None):
        self.backbone, self.config = backbone, config
        self._lock = threading.Lock()
        self.examples: dict[str, np.ndarray] = {}
        #: a fine-tuned classifier measures novelty on pretrained embeddings: kept beside the tuned ones
        self.pretrained = classifier.pretrained if classifier is not None else None
        self.pretrained_examples: dict[str, np.ndarray] = {}
        self.classifier = classifier
        if classifier is not None:
            config.strategy = classifier.strategy.name
            config.open_set = replace(classifier.open_set)
            for index, label in enumerate(classifier.classes):
                mine = classifier.head.support.select(classifier.head.labels == index)
                self.examples[label] = mine.features
                if classifier.pretrained is not None:
                    self.pretrained_examples[label] = mine.novelty

    def counts(self) -> dict[str, int]:
        return {label: len(features) for label, features in self.examples.items()}

    def add(self, label: str, features: np.ndarray, pretrained_features: np.ndarray | None = None) -> None:
        with self._lock:
            previous = self.examples.get(label)
            self.examples[label] = features if previous is None else np.concatenate([previous, features])
            if self.pretrained is not None and pretrained_features is not None:
                previous = self.pretrained_examples.get(label)
                self.pretrained_examples[label] = (
                    pretrained_features
                    if previous is None
                    else np.concatenate([previous, pretrained_features])
                )
            self._rebuild()

    def remove(self, label: str) -> None:
        with self._lock:
            if label not in self.examples:
                raise KeyError(label)
            del self.examples[label]
            self.pretrained_examples.pop(label, None)
            self._rebuild()

    def retrain(self, strategy: str | None = None) -> None:
        with self._lock:
            if strategy is not None:
                create_strategy(strategy)  # validate before switching
                self.config.strategy = strategy
            self._rebuild()

    def _rebuild(self) -> None:
        """Fit a new classifier on every example, then swap it in (one reference assignment)."""
        if len(self.examples) < 2:
            self.classifier = None
            return
        classes = list(self.examples)
        labels = np.concatenate(
            [np.full(len(f), i, dtype=np.int64) for i, f in enumerate(self.examples.values())]
        )
        features = np.concatenate(list(self.examples.values()))
        novelty = (
            np.concatenate(list(self.pretrained_examples.values()))
            if self.pretrained is not None
            else features
        )
        head = Head(
            strategy=create_strategy(self.config.strategy),
            classes=classes,
            support=Embeddings(features, novelty),
            labels=labels,
            open_set=replace(self.config.open_set),
        )
        head.fit()
        training = {"source": "fewtune serve", "images": len(labels), "per_class": self.counts()}
        self.classifier = Classifier(
            backbone=self.backbone, head=head, pretrained=self.pretrained, training=training
        )

"""The geometry strategies and the open set share: unit embeddings, class means, leave-one-out.

On pretrained embeddings cosine geometry beats raw Euclidean, so everything here works on
L2-normalised rows. A class's prototype is the normalised *sum* of its unit embeddings (the same
direction as their mean), which lets one example be taken out of it exactly: the leave-one-out
scores that calibrate the unknown threshold and the prototype's temperature, and that tell
whether fine-tuning could pay, all come from :func:`leave_one_out_similarity`.
"""

from __future__ import annotations

import numpy as np


def normalize(features: np.ndarray) -> np.ndarray:
    """L2-normalised float32 rows (a zero row stays zero)."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, np.float32(1e-12))


def class_sums(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, dim) sums of each class's unit embeddings."""
    sums = np.zeros((num_classes, features.shape[1]), dtype=np.float32)
    np.add.at(sums, labels, normalize(features))
    return sums


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, dim) unit prototypes: the direction of each class's mean unit embedding."""
    return normalize(class_sums(features, labels, num_classes))


def between_class_similarity(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine similarity of examples of different classes: how alike the classes look (0.2
    for Caltech-101 photos, 0.6 for Omniglot characters), which tells how sure a classifier of
    one example a class can be. 0 with a single class."""
    # over pairs of different classes: |sum of all|^2 minus each class's |sum|^2, in O(n): no n x n matrix
    unit = normalize(features).astype(np.float64)
    sums = np.zeros((int(labels.max()) + 1, unit.shape[1]))
    np.add.at(sums, labels, unit)
    counts = np.bincount(labels).astype(np.float64)
    pairs = float(len(labels) ** 2 - (counts**2).sum())
    between = float((unit.sum(0) ** 2).sum() - (sums**2).sum())
    return between / pairs if pairs > 0 else 0.0


def leave_one_out_similarity(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, num_classes) cosine similarity of each example to every class prototype, its own
    class's rebuilt without it: how a new example of a known class looks to the classifier.

    For an example alone in its class the own-class entry is 0 (no prototype is left).
    """
    unit = normalize(features)
    sums = class_sums(features, labels, num_classes)
    similarity = unit @ normalize(sums).T
    own = np.arange(len(labels))
    similarity[own, labels] = (unit * normalize(sums[labels] - unit)).sum(axis=1)
    return similarity

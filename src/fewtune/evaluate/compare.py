"""`fewtune compare`: learning curves of every strategy on the user's own data, and a recommendation.

One fixed held-out split per class; for each number of examples per class, several random draws
of training images from the rest (the same draws for every strategy). Accuracy with a 95% CI
over draws, training time, and prediction latency per image (backbone + head) for each strategy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fewtune.data.dataset import Dataset, load_dataset
from fewtune.data.images import load as load_image
from fewtune.data.leakage import duplicates, fingerprint
from fewtune.evaluate.benchmark import Images, fit_with_backbone
from fewtune.evaluate.episodes import mean_ci95
from fewtune.features.backbones import Backbone, create_backbone
from fewtune.features.embedding import embed_files
from fewtune.model.head import Head
from fewtune.progress import ProgressBar
from fewtune.strategies import create_strategy


@dataclass
class CurvePoint:
    strategy: str
    shots: int
    mean: float  #: accuracy in percent
    ci95: float
    draws: int
    train_seconds: float  #: mean time to fit: on cached embeddings, plus fine-tuning for `finetune`
    predict_ms: float  #: one new image file, warm: decode, preprocess, the strategy's backbone and head


@dataclass
class Comparison:
    points: list[CurvePoint]
    test_images: int
    classes: list[str]
    recommendation: str
    skipped_shots: list[int] = field(default_factory=list)
    #: (test image, training-pool image) duplicates
    leaks: list[tuple[str, str]] = field(default_factory=list)
    deduped: bool = False
    interrupted: bool = False  #: Ctrl-C stopped the measurements; the points are what was measured
    #: strategy -> (path, truth, predicted)
    mistakes: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


def holdout_split(
    labels: list[int], test_fraction: float, seed: int
) -> tuple[dict[int, list[int]], list[int]]:
    """Per class, a fixed ``test_fraction`` (at least one image) held out; the rest is the pool to
    train from."""
    rng = np.random.default_rng(seed)
    pool: dict[int, list[int]] = {}
    test: list[int] = []
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        members = [members[j] for j in rng.permutation(len(members))]
        n_test = max(1, round(test_fraction * len(members)))
        test += members[:n_test]
        pool[c] = members[n_test:]
    return pool, sorted(test)


def compare(
    dataset: Dataset,
    backbone: Backbone,
    shots: list[int],
    strategies: list[str],
    *,
    draws: int = 5,
    test_fraction: float = 0.3,
    seed: int = 0,
    dedupe: bool = False,
    progress: bool = False,
    advance: Callable[[int], None] | None = None,
) -> Comparison:
    """Measure every strategy at every ``shots`` value on the same held-out images.

    Test images that duplicate a training-pool image are reported, and left out with ``dedupe``.
    ``advance`` is called after each draw; Ctrl-C returns what was measured (``interrupted``).
    """
    for name in strategies:
        create_strategy(name)
    features = embed_files(backbone, dataset.paths, progress=progress).features
    labels = np.asarray(dataset.labels, dtype=np.int64)
    pool, test = holdout_split(dataset.labels, test_fraction, seed)
    pairs = duplicates(fingerprint(dataset.paths), test, [i for members in pool.values() for i in members])
    leaks = [(str(dataset.paths[i]), str(dataset.paths[j])) for i, j in pairs]
    if dedupe:
        leaked = {i for i, _ in pairs}
        test = [i for i in test if i not in leaked]
    smallest_pool = min(len(v) for v in pool.values())
    usable = [k for k in shots if k <= smallest_pool]
    rng = np.random.default_rng(seed + 1)
    images = Images(backbone, dataset.paths)
    for name in strategies:  # warm-up, so the first timed fit does not pay one-off costs
        first = [pool[c][0] for c in sorted(pool)]
        if not create_strategy(name).learns_from_images:  # fine-tuning is too slow to run twice for this
            create_strategy(name).fit(features[first], labels[first], len(dataset.classes))
    scores: dict[tuple[str, int], list[float]] = {}
    times: dict[tuple[str, int], list[float]] = {}
    latency: dict[tuple[str, int], float] = {}
    mistakes: dict[str, list[tuple[str, str, str]]] = {}
    interrupted = False
    try:
        for k in usable:
            for draw in range(draws):
                train = [i for c in sorted(pool) for i in rng.choice(pool[c], size=k, replace=False).tolist()]
                for name in strategies:
                    strategy = create_strategy(name)
                    started = time.perf_counter()
                    head, embed, used = fit_with_backbone(
                        strategy, features, train, labels[train], len(dataset.classes), images
                    )
                    times.setdefault((name, k), []).append(time.perf_counter() - started)
                    predicted = head.probabilities(embed(test)).argmax(1)
                    if draw == 0:
                        latency[(name, k)] = _predict_ms(
                            used or backbone, head, [dataset.paths[i] for i in test[:4]]
                        )
                    right = predicted == labels[test]
                    scores.setdefault((name, k), []).append(float(right.mean()))
                    if k == usable[-1] and draw == 0:
                        mistakes[name] = [
                            (
                                str(dataset.paths[test[j]]),
                                dataset.classes[int(labels[test[j]])],
                                dataset.classes[int(predicted[j])],
                            )
                            for j in np.flatnonzero(~right).tolist()
                        ]
                if advance:
                    advance(1)
    except KeyboardInterrupt:
        interrupted = True
    points = []
    for k in usable:
        for name in strategies:
            if (name, k) not in scores:
                continue
            mean, ci = mean_ci95(scores[(name, k)])
            seconds = round(float(np.mean(times[(name, k)])), 4)
            points.append(CurvePoint(
                name, k, round(100 * mean, 2), round(100 * ci, 2), len(scores[(name, k)]), seconds,
                round(latency[(name, k)], 2),
            ))  # fmt: skip
    skipped = [k for k in shots if k not in usable]
    return Comparison(
        points, len(test), list(dataset.classes), recommend(points),
        skipped_shots=skipped, leaks=leaks, deduped=dedupe, mistakes=mistakes, interrupted=interrupted,
    )  # fmt: skip


def compare_data(
    data: Path,
    shots: list[int],
    strategies: list[str],
    *,
    backbone: str = "efficientnet_lite0",
    weights: Path | None = None,
    draws: int = 5,
    test_fraction: float = 0.3,
    seed: int = 0,
    dedupe: bool = False,
    progress: bool = False,
) -> Comparison:
    """:func:`compare` on the labelled images at ``data`` (a folder of class folders or a CSV),
    embedded by the named ``backbone``; with ``progress``, a bar counts the draws."""
    dataset = load_dataset(data)
    encoder = create_backbone(backbone, weights)
    with ProgressBar("draws", len(shots) * draws, enabled=progress) as advance:
        return compare(
            dataset, encoder, shots, strategies, draws=draws, test_fraction=test_fraction, seed=seed,
            dedupe=dedupe, progress=progress, advance=advance,
        )  # fmt: skip


def _predict_ms(backbone: Backbone, head: Head, paths: list[Path]) -> float:
    """Milliseconds to classify one new image file with this strategy (decode, preprocess, its
    backbone, its head), warm: one call first pays the one-off costs (oneDNN picking kernels,
    allocations) that made the first measurement 2.8 s and a rerun 80 ms; then the median of 3."""
    from fewtune.features.embedding import build_transform

    transform = build_transform(backbone.preprocessing)

    def once(path: Path) -> float:
        started = time.perf_counter()
        head.probabilities(backbone.embed(transform(load_image(path)).unsqueeze(0)).numpy())
        return time.perf_counter() - started

    once(paths[0])
    return 1000 * float(np.median([once(p) for p in (paths[1:] or paths)]))


def recommend(points: list[CurvePoint]) -> str:
    """At the most examples per class measured: the cheapest strategy within the best one's CI."""
    if not points:
        return "no setting could be measured: every class needs more images than the smallest --shots"
    k = max(p.shots for p in points)
    at_k = [p for p in points if p.shots == k]
    best = max(at_k, key=lambda p: p.mean)
    close = [p for p in at_k if best.mean - p.mean <= max(best.ci95, p.ci95)]
    cheapest = min(close, key=lambda p: p.train_seconds)
    if cheapest.strategy == best.strategy:
        return (
            f"with {k} examples per class on this data, `{best.strategy}` is the most accurate "
            f"({best.mean:.1f}%)"
        )
    ratio = best.train_seconds / max(cheapest.train_seconds, 1e-6)
    return (
        f"with {k} examples per class on this data, `{cheapest.strategy}` is within "
        f"{best.mean - cheapest.mean:.1f} points of `{best.strategy}` at 1/{ratio:.0f} of the training time"
    )

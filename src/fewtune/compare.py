"""`fewtune compare`: learning curves of every strategy on the user's own data, and a recommendation.

One fixed held-out split per class; for each number of examples per class, several random draws
of training images from the rest (the same draws for every strategy). Accuracy with a 95% CI
over draws, training time, and prediction latency per image (backbone + head) for each strategy.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
import torch

from fewtune.backbones import Backbone
from fewtune.benchmark import Images, fit_on
from fewtune.dataset import Dataset
from fewtune.episodes import mean_ci95
from fewtune.errors import FewtuneError
from fewtune.features import embed_files
from fewtune.images import load as load_image
from fewtune.leakage import duplicates, fingerprint
from fewtune.strategies import create_strategy


@dataclass
class CurvePoint:
    strategy: str
    shots: int
    mean: float  #: accuracy in percent
    ci95: float
    draws: int
    train_seconds: float  #: mean time to fit: on cached embeddings, plus fine-tuning for `finetune`
    predict_ms: float  #: per image: backbone forward + the strategy's head


@dataclass
class Comparison:
    points: list[CurvePoint]
    test_images: int
    classes: list[str]
    recommendation: str
    skipped_shots: list[int] = field(default_factory=list)
    leaks: list[tuple[str, str]] = field(default_factory=list)  #: (test image, training-pool image) duplicates
    deduped: bool = False
    interrupted: bool = False  #: Ctrl-C stopped the measurements; the points are what was measured
    mistakes: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # strategy -> (path, truth, predicted)


def holdout_split(labels: list[int], test_fraction: float, seed: int) -> tuple[dict[int, list[int]], list[int]]:
    """Per class, a fixed ``test_fraction`` (at least one image) held out; the rest is the pool to train from."""
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
    labels = torch.tensor(dataset.labels)
    pool, test = holdout_split(dataset.labels, test_fraction, seed)
    pairs = duplicates(fingerprint(dataset.paths), test, [i for members in pool.values() for i in members])
    leaks = [(str(dataset.paths[i]), str(dataset.paths[j])) for i, j in pairs]
    if dedupe:
        leaked = {i for i, _ in pairs}
        test = [i for i in test if i not in leaked]
    backbone_ms = _backbone_ms_per_image(backbone, dataset.paths[:8])
    smallest_pool = min(len(v) for v in pool.values())
    usable = [k for k in shots if k <= smallest_pool]
    rng = np.random.default_rng(seed + 1)
    images = Images(backbone, dataset.paths)
    for name in strategies:  # warm-up, so the first timed fit does not pay one-off costs
        first = [pool[c][0] for c in sorted(pool)]
        if not create_strategy(name).needs_images:  # fine-tuning is too slow to run twice for this
            create_strategy(name).fit(features[first], labels[first], len(dataset.classes))
    scores: dict[tuple[str, int], list[float]] = {}
    times: dict[tuple[str, int], list[float]] = {}
    heads: dict[tuple[str, int], list[float]] = {}
    mistakes: dict[str, list[tuple[str, str, str]]] = {}
    interrupted = False
    try:
        for k in usable:
            for draw in range(draws):
                train = [i for c in sorted(pool) for i in rng.choice(pool[c], size=k, replace=False).tolist()]
                for name in strategies:
                    strategy = create_strategy(name)
                    started = time.perf_counter()
                    embed = fit_on(strategy, features, train, labels[train], len(dataset.classes), images)
                    times.setdefault((name, k), []).append(time.perf_counter() - started)
                    test_features = embed(test)
                    started = time.perf_counter()
                    predicted = strategy.logits(test_features).argmax(1)
                    heads.setdefault((name, k), []).append(1000 * (time.perf_counter() - started) / len(test))
                    right = predicted == labels[test]
                    scores.setdefault((name, k), []).append(float(right.float().mean()))
                    if k == usable[-1] and draw == 0:
                        mistakes[name] = [
                            (str(dataset.paths[test[j]]), dataset.classes[int(labels[test[j]])], dataset.classes[int(predicted[j])])
                            for j in (~right).nonzero().flatten().tolist()
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
            points.append(CurvePoint(
                name, k, round(100 * mean, 2), round(100 * ci, 2), len(scores[(name, k)]), round(float(np.mean(times[(name, k)])), 4),
                round(backbone_ms + float(np.mean(heads[(name, k)])), 2),
            ))  # fmt: skip
    skipped = [k for k in shots if k not in usable]
    return Comparison(
        points, len(test), list(dataset.classes), recommend(points),
        skipped_shots=skipped, leaks=leaks, deduped=dedupe, mistakes=mistakes, interrupted=interrupted,
    )  # fmt: skip


def _backbone_ms_per_image(backbone: Backbone, paths: list[Path]) -> float:
    """Latency of embedding one image (decode + preprocess + forward), best of the sample."""
    from fewtune.features import build_transform

    transform = build_transform(backbone.preprocessing)
    best = float("inf")
    for path in paths:
        started = time.perf_counter()
        backbone.embed(transform(load_image(path)).unsqueeze(0))
        best = min(best, time.perf_counter() - started)
    return 1000 * best


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
        return f"with {k} examples per class on this data, `{best.strategy}` is the most accurate ({best.mean:.1f}%)"
    ratio = best.train_seconds / max(cheapest.train_seconds, 1e-6)
    return (
        f"with {k} examples per class on this data, `{cheapest.strategy}` is within {best.mean - cheapest.mean:.1f} points "
        f"of `{best.strategy}` at 1/{ratio:.0f} of the training time"
    )


def write_report(comparison: Comparison, folder: Path, title: str) -> Path:
    """``folder/index.html`` (self-contained: plots and thumbnails inline) and ``folder/*.png``."""
    try:
        import matplotlib
        import matplotlib.ticker
    except ImportError:
        raise FewtuneError("the report's plots need matplotlib: pip install 'fewtune[report]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    strategies = list(dict.fromkeys(p.strategy for p in comparison.points))
    plots = {}
    for name, ylabel, value in (
        ("accuracy", "accuracy on held-out images (%)", lambda p: p.mean),
        ("training-time", "training time (s)", lambda p: p.train_seconds),
    ):
        figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
        for strategy in strategies:
            line = [p for p in comparison.points if p.strategy == strategy]
            errors = [p.ci95 for p in line] if name == "accuracy" else None
            axis.errorbar([p.shots for p in line], [value(p) for p in line], yerr=errors, marker="o", capsize=3, label=strategy)
        axis.set_xscale("log")
        shots = sorted({p.shots for p in comparison.points})
        axis.set_xticks(shots, [str(k) for k in shots])
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if name == "training-time":
            axis.set_yscale("log")
        axis.set_xlabel("examples per class")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
        plt.close(figure)
        (folder / f"{name}.png").write_bytes(buffer.getvalue())
        plots[name] = base64.b64encode(buffer.getvalue()).decode()

    rows = "".join(
        f"<tr><td>{escape(p.strategy)}</td><td>{p.shots}</td><td>{p.mean:.2f} ± {p.ci95:.2f}</td>"
        f"<td>{p.train_seconds:.4f}</td><td>{p.predict_ms:.1f}</td></tr>"
        for p in comparison.points
    )
    best = max(comparison.points, key=lambda p: (p.shots, p.mean), default=None)
    wrong = comparison.mistakes.get(best.strategy, [])[:12] if best else []
    thumbs = "".join(
        f'<figure><img alt="{escape(Path(path).name)}" src="data:image/jpeg;base64,{_thumbnail(path)}">'
        f"<figcaption>{escape(truth)} → {escape(predicted)}</figcaption></figure>"
        for path, truth, predicted in wrong
    )
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font:15px system-ui,sans-serif;max-width:62rem;margin:auto;padding:1rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2rem .5rem}}figure{{display:inline-block;margin:.3rem;font-size:.8em;text-align:center}}
figure img{{width:96px;height:96px;object-fit:cover}}</style></head><body>
<h1>{escape(title)}</h1>
<p id="recommendation"><b>{escape(comparison.recommendation)}</b></p>
<p id="leakage">{_leak_text(comparison)}</p>{'<p><b>Interrupted: partial results.</b></p>' if comparison.interrupted else ''}
<p>{comparison.test_images} held-out images over {len(comparison.classes)} classes; each point is the mean of
{comparison.points[0].draws if comparison.points else 0} random draws of training images (95% CI).</p>
<img id="accuracy-plot" alt="accuracy against examples per class" src="data:image/png;base64,{plots['accuracy']}">
<img id="time-plot" alt="training time against examples per class" src="data:image/png;base64,{plots['training-time']}">
<h2>Results</h2><table id="results"><tr><th>strategy</th><th>examples per class</th><th>accuracy (%)</th>
<th>training (s)</th><th>prediction (ms / image)</th></tr>{rows}</table>
<h2>Mistakes of {escape(best.strategy) if best else ''} at {best.shots if best else ''} examples per class</h2>
<div id="mistakes">{thumbs or "none"}</div>
</body></html>
"""
    staging = folder / ".index.html.partial"
    staging.write_text(html, encoding="utf-8")
    staging.replace(folder / "index.html")
    return folder / "index.html"


def _leak_text(comparison: Comparison) -> str:
    if not comparison.leaks:
        return "No held-out image duplicates a training image."
    action = "they were left out" if comparison.deduped else "rerun with --dedupe to leave them out"
    return escape(f"{len(comparison.leaks)} held-out images duplicate a training image (same or nearly the same picture); {action}.")


def _thumbnail(path: str) -> str:
    image = load_image(path)
    image.thumbnail((128, 128))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()

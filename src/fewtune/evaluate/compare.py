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

from fewtune.data.dataset import Dataset, load_dataset
from fewtune.data.images import load as load_image
from fewtune.data.leakage import duplicates, fingerprint
from fewtune.errors import FewtuneError
from fewtune.evaluate.benchmark import Images, fit_with_backbone
from fewtune.evaluate.episodes import mean_ci95
from fewtune.evaluate.thumbnails import jpeg_data_uri
from fewtune.features.backbones import Backbone, create_backbone
from fewtune.features.embedding import embed_files
from fewtune.progress import ProgressBar
from fewtune.storage import atomic
from fewtune.strategies import Strategy, create_strategy


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
    labels = torch.tensor(dataset.labels)
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
                    embed, used = fit_with_backbone(
                        strategy, features, train, labels[train], len(dataset.classes), images
                    )
                    times.setdefault((name, k), []).append(time.perf_counter() - started)
                    predicted = strategy.logits(embed(test)).argmax(1)
                    if draw == 0:
                        latency[(name, k)] = _predict_ms(
                            used or backbone, strategy, [dataset.paths[i] for i in test[:4]]
                        )
                    right = predicted == labels[test]
                    scores.setdefault((name, k), []).append(float(right.float().mean()))
                    if k == usable[-1] and draw == 0:
                        mistakes[name] = [
                            (
                                str(dataset.paths[test[j]]),
                                dataset.classes[int(labels[test[j]])],
                                dataset.classes[int(predicted[j])],
                            )
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


def _predict_ms(backbone: Backbone, strategy: Strategy, paths: list[Path]) -> float:
    """Milliseconds to classify one new image file with this strategy (decode, preprocess, its
    backbone, its head), warm: one call first pays the one-off costs (oneDNN picking kernels,
    allocations) that made the first measurement 2.8 s and a rerun 80 ms; then the median of 3."""
    from fewtune.features.embedding import build_transform

    transform = build_transform(backbone.preprocessing)

    def once(path: Path) -> float:
        started = time.perf_counter()
        strategy.logits(backbone.embed(transform(load_image(path)).unsqueeze(0)))
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


REPORT_STYLE = (
    "body{font:15px system-ui,sans-serif;max-width:62rem;margin:auto;padding:1rem}"
    "table{border-collapse:collapse}\n"
    "td,th{border:1px solid #ccc;padding:.2rem .5rem}"
    "figure{display:inline-block;margin:.3rem;font-size:.8em;text-align:center}\n"
    "figure img{width:96px;height:96px;object-fit:cover}"
)
MARKERS = ("o", "s", "^", "D", "v", "P")
LINES = ("-", "--", ":", "-.")


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
        ("accuracy", "accuracy on held-out images", lambda p: p.mean),
        ("training-time", "training time (s)", lambda p: p.train_seconds),
    ):
        figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
        for n, strategy in enumerate(strategies):
            line = [p for p in comparison.points if p.strategy == strategy]
            # tied curves stay visible: each strategy its own marker and line style, nudged sideways
            nudge = 1.04 ** (n - (len(strategies) - 1) / 2)
            errors = None
            if name == "accuracy":  # no error bar reaches past 100%
                errors = [[p.ci95 for p in line], [min(p.ci95, 100 - p.mean) for p in line]]
            axis.errorbar(
                [p.shots * nudge for p in line], [value(p) for p in line], yerr=errors, capsize=3,
                label=strategy, marker=MARKERS[n % len(MARKERS)], linestyle=LINES[n % len(LINES)],
                markersize=6, clip_on=False,
            )  # fmt: skip
        axis.set_xscale("log")
        shots = sorted({p.shots for p in comparison.points})
        axis.set_xticks(shots, [str(k) for k in shots])
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        if name == "training-time":
            axis.set_yscale("log")
        else:  # accuracy: the axis ends at 100%, its ticks say so
            low = min((p.mean - p.ci95 for p in comparison.points), default=0.0)
            axis.set_ylim(max(0.0, min(low - 2, 90.0)), 100)  # at least 10 points tall: distinct tick labels
            axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(decimals=0))
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
        f'<figure><img alt="{escape(Path(path).name)}" src="{jpeg_data_uri(path) or ""}">'
        f"<figcaption>{escape(truth)} → {escape(predicted)}</figcaption></figure>"
        for path, truth, predicted in wrong
    )
    interrupted = "<p><b>Interrupted: partial results.</b></p>" if comparison.interrupted else ""
    accuracy_png = f"data:image/png;base64,{plots['accuracy']}"
    time_png = f"data:image/png;base64,{plots['training-time']}"
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{REPORT_STYLE}</style></head><body>
<h1>{escape(title)}</h1>
<p id="recommendation"><b>{_code(comparison.recommendation)}</b></p>
<p id="leakage">{_leak_text(comparison)}</p>{interrupted}
<p>{comparison.test_images} held-out images over {len(comparison.classes)} classes; each point is the mean of
{comparison.points[0].draws if comparison.points else 0} random draws of training images (95% CI).</p>
<img id="accuracy-plot" alt="accuracy against examples per class" src="{accuracy_png}">
<img id="time-plot" alt="training time against examples per class" src="{time_png}">
<h2>Results</h2><table id="results"><tr><th>strategy</th><th>examples per class</th><th>accuracy (%)</th>
<th>training (s)</th><th>prediction (ms / image, warm)</th></tr>{rows}</table>
{_mistakes_section(best, thumbs)}
</body></html>
"""
    return atomic.write_text(folder / "index.html", html)


def _mistakes_section(best: CurvePoint | None, thumbs: str) -> str:
    if best is None:
        return ""
    where = f"{escape(best.strategy)} at {best.shots} examples per class"
    if not thumbs:
        return f'<p id="no-mistakes">No mistakes by {where} (first draw).</p>'
    return f'<h2>Mistakes of {where}</h2><div id="mistakes">{thumbs}</div>'


def _code(text: str) -> str:
    """Escaped HTML in which `name` (Markdown's code, as the terminal prints it) becomes <code>name</code>."""
    parts = escape(text).split("`")
    if len(parts) % 2 == 0:  # an odd number of backticks: not code spans, keep them as typed
        return escape(text)
    return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))


def _leak_text(comparison: Comparison) -> str:
    if not comparison.leaks:
        return "No held-out image duplicates a training image."
    action = "they were left out" if comparison.deduped else "rerun with --dedupe to leave them out"
    return escape(
        f"{len(comparison.leaks)} held-out images duplicate a training image "
        f"(same or nearly the same picture); {action}."
    )

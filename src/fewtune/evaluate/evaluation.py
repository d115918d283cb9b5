"""How good is a classifier on labelled test images: accuracy, per-class scores, calibration and
the mistakes it is most sure of."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fewtune.data.dataset import Dataset, load_dataset
from fewtune.data.inputs import ImageInput
from fewtune.errors import FewtuneError
from fewtune.geometry import normalize
from fewtune.model.calibration import expected_calibration_error
from fewtune.model.classifier import Classifier, load
from fewtune.storage import atomic


@dataclass
class ClassScores:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class Mistake:
    path: str
    truth: str
    predicted: str
    score: float


@dataclass
class Report:
    """Scores on the test images of known classes (closed set: the best class is the answer).

    Attributes:
        confusion: rows = true class, columns = predicted class, in ``classes`` order.
        ece_uncalibrated / ece: expected calibration error without / with the fitted temperature.
        duplicates_of_training: test images that are copies of training images (left out if ``deduped``).
        unknown_classes: test classes the classifier does not know; with ``unknown_rejected``,
            the share of their images it answered "unknown" (open set).
        known_rejected: share of known-class images wrongly answered "unknown" (open set).
    """

    images: int
    accuracy: float
    balanced_accuracy: float
    ece_uncalibrated: float
    ece: float
    classes: list[str]
    per_class: list[ClassScores]
    confusion: list[list[int]]
    mistakes: list[Mistake]
    known_rejected: float
    unknown_classes: list[str] = field(default_factory=list)
    unknown_images: int = 0
    unknown_rejected: float | None = None
    duplicates_of_training: list[str] = field(default_factory=list)
    deduped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SAME_PICTURE = 0.9999  #: cosine between embeddings above which a test image is a copy of a training one


def evaluate(
    classifier: Classifier,
    data: Dataset,
    *,
    skip_bad: bool = False,
    progress: bool = False,
    mistakes: int = 10,
    dedupe: bool = False,
) -> Report:
    """Score ``classifier`` on a labelled dataset whose class names match its classes.

    Test classes it does not know are used to measure open-set rejection instead. Test images
    that are copies of training images (the classifier keeps their embeddings, not the files:
    cosine >= :data:`SAME_PICTURE`) are counted in ``Report.duplicates_of_training``, and left
    out with ``dedupe``.
    """
    images: list[ImageInput] = list(data.paths)
    batch, kept = classifier.embed(images, skip_bad=skip_bad, progress=progress)
    head = classifier.head
    names = [data.classes[data.labels[i]] for i in kept]
    paths = [str(data.paths[i]) for i in kept]
    similarity = normalize(batch.novelty) @ normalize(head.support.novelty).T
    copies = similarity.max(axis=1) >= SAME_PICTURE if len(batch) else np.zeros(0, dtype=bool)
    duplicates = [p for p, c in zip(paths, copies.tolist(), strict=True) if c]
    if dedupe and duplicates:
        keep = np.flatnonzero(~copies).tolist()
        names, paths, batch = [names[i] for i in keep], [paths[i] for i in keep], batch.select(keep)
    known = np.array([n in classifier.classes for n in names], dtype=bool)
    probabilities = head.probabilities(batch.features[known])
    uncalibrated = head.probabilities(batch.features[known], temperature=1.0)
    truth = np.array(
        [classifier.classes.index(n) for n, k in zip(names, known.tolist(), strict=True) if k],
        dtype=np.int64,
    )
    predicted = probabilities.argmax(1)
    num_classes = len(classifier.classes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)

    per_class = []
    for c, label in enumerate(classifier.classes):
        tp, predicted_c, actual_c = int(confusion[c, c]), int(confusion[:, c].sum()), int(confusion[c].sum())
        precision = tp / predicted_c if predicted_c else 0.0
        recall = tp / actual_c if actual_c else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(ClassScores(label, round(precision, 4), round(recall, 4), round(f1, 4), actual_c))
    present = [s for s in per_class if s.support]

    known_paths = [p for p, k in zip(paths, known.tolist(), strict=True) if k]
    confidence = probabilities.max(1)
    wrong = np.flatnonzero(predicted != truth).tolist()
    wrong.sort(key=lambda i: -float(confidence[i]))
    novelty = head.novelty(batch.novelty)
    threshold = classifier.open_set.threshold
    unknown_names = sorted({n for n, k in zip(names, known.tolist(), strict=True) if not k})
    return Report(
        images=int(known.sum()),
        accuracy=round(float((predicted == truth).mean()) if len(truth) else 0.0, 4),
        balanced_accuracy=round(sum(s.recall for s in present) / len(present), 4) if present else 0.0,
        ece_uncalibrated=round(expected_calibration_error(uncalibrated, truth), 4) if len(truth) else 0.0,
        ece=round(expected_calibration_error(probabilities, truth), 4) if len(truth) else 0.0,
        classes=list(classifier.classes),
        per_class=per_class,
        confusion=confusion.tolist(),
        mistakes=[
            Mistake(
                known_paths[i],
                classifier.classes[int(truth[i])],
                classifier.classes[int(predicted[i])],
                round(float(confidence[i]), 4),
            )
            for i in wrong[:mistakes]
        ],
        known_rejected=round(float((novelty[known] > threshold).mean()), 4) if known.any() else 0.0,
        unknown_classes=unknown_names,
        unknown_images=int((~known).sum()),
        unknown_rejected=round(float((novelty[~known] > threshold).mean()), 4) if (~known).any() else None,
        duplicates_of_training=duplicates,
        deduped=dedupe,
    )


def evaluate_saved(
    model: Path, data: Path, *, skip_bad: bool = False, progress: bool = False, dedupe: bool = False
) -> Report:
    """:func:`evaluate` the classifier saved at ``model`` on the labelled images at ``data``.

    Raises:
        FewtuneError: no class of ``data`` is one of the classifier's.
    """
    classifier = load(model)
    test = load_dataset(data, min_classes=1)
    if not set(test.classes) & set(classifier.classes):
        raise FewtuneError(
            f"{data}: none of its classes ({', '.join(test.classes[:5])}) is one of the classifier's "
            f"({', '.join(classifier.classes[:5])})"
        )
    return evaluate(classifier, test, skip_bad=skip_bad, progress=progress, dedupe=dedupe)


REPORT_STYLE = (
    "body{font:15px system-ui,sans-serif;max-width:60rem;margin:auto;padding:1rem}"
    "table{border-collapse:collapse;margin:.5rem 0}\n"
    "td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}"
    "td:first-child,th:first-child{text-align:left}\n"
    "#confusion td{min-width:2.5rem;text-align:center}\n"
    "figure{display:inline-block;margin:.3rem;width:120px;font-size:.8em;text-align:center;vertical-align:top;"
    "overflow-wrap:anywhere}\n"
    "figure img,.missing{width:112px;height:112px;object-fit:cover;border:2px solid #dc2626;"
    "border-radius:4px;display:block;margin:auto}\n"
    ".missing{line-height:112px;background:#eee;color:#666}"
)
MATRIX_KEY = (
    "rows: true class; columns: predicted; green: right, red: wrong, darker: a larger share of the row"
)


def render_html(report: Report, title: str) -> str:
    """A self-contained HTML page of the report (no external resources): the confusion matrix
    coloured by share of each true class, and the mistakes as thumbnails (small inline JPEGs)."""
    from html import escape

    from fewtune.evaluate.thumbnails import jpeg_data_uri

    rows = "".join(
        f"<tr><td>{escape(s.label)}</td><td>{s.precision:.3f}</td><td>{s.recall:.3f}</td><td>{s.f1:.3f}</td><td>{s.support}</td></tr>"
        for s in report.per_class
    )
    head = "".join(f"<th>{escape(c)}</th>" for c in report.classes)
    matrix = "".join(
        f"<tr><th>{escape(c)}</th>"
        + "".join(_matrix_cell(n, sum(row), i == j) for j, n in enumerate(row))
        + "</tr>"
        for i, (c, row) in enumerate(zip(report.classes, report.confusion, strict=True))
    )
    figures = []
    for m in report.mistakes:
        uri = jpeg_data_uri(m.path, size=112)
        picture = (
            f'<img alt="{escape(Path(m.path).name)}" src="{uri}">'
            if uri
            else '<div class="missing">unreadable now</div>'
        )
        figures.append(
            f'<figure title="{escape(m.path)}">{picture}'
            f"<figcaption><b>{escape(m.predicted)}</b> ({m.score:.2f})<br>"
            f"was {escape(m.truth)}<br><small>{escape(Path(m.path).name)}</small></figcaption></figure>"
        )
    if figures:
        mistakes = f'<h2>Most confident mistakes</h2><div id="mistakes">{"".join(figures)}</div>'
    elif report.images:
        mistakes = '<p id="no-mistakes">No mistakes: every test image of a known class got its class.</p>'
    else:
        mistakes = ""
    unknown = ""
    if report.unknown_rejected is not None:
        unknown = (
            f"<p>Open set: {report.unknown_images} images of classes it does not know "
            f"({escape(', '.join(report.unknown_classes))}); "
            f"{100 * report.unknown_rejected:.1f}% answered unknown.</p>"
        )
    accuracy = f"{100 * report.accuracy:.1f}% on {report.images} images"
    calibration = (
        f"{100 * report.ece:.1f}% (without temperature scaling {100 * report.ece_uncalibrated:.1f}%)"
    )
    columns = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{REPORT_STYLE}</style></head><body>
<h1>{escape(title)}</h1>
<p id="summary">Accuracy {accuracy}; balanced accuracy {100 * report.balanced_accuracy:.1f}%;
expected calibration error {calibration};
known images answered unknown: {100 * report.known_rejected:.1f}%.</p>{unknown}
<h2>Per class</h2><table id="per-class">{columns}{rows}</table>
<h2>Confusion matrix</h2><p>{MATRIX_KEY}</p>
<table id="confusion"><tr><th></th>{head}</tr>{matrix}</table>
{mistakes}
</body></html>
"""


def _matrix_cell(count: int, row_total: int, diagonal: bool) -> str:
    """A confusion-matrix cell shaded by its share of the true class: green on the diagonal, red off it."""
    if not count:
        return '<td class="zero"></td>'
    share = count / row_total
    rgb = "22,163,74" if diagonal else "220,38,38"
    ink = "#fff" if share > 0.55 else "#111"
    kind = "right" if diagonal else "wrong"
    background = f"rgba({rgb},{0.12 + 0.88 * share:.2f})"
    return f'<td class="{kind}" style="background:{background};color:{ink}">{count}</td>'


def write_html(report: Report, path: Path, title: str) -> Path:
    """Write the HTML report; a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_text(path, render_html(report, title))

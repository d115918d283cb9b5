"""The `fewtune compare` report: one self-contained HTML page (plots and thumbnails inline).

Reports must stay single files a user can mail or archive: the learning curves are PNGs written
beside the page and embedded in it, the mistakes small inline JPEGs (see :mod:`.thumbnails`).
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

from fewtune.errors import FewtuneError
from fewtune.evaluate.compare import Comparison, CurvePoint
from fewtune.evaluate.thumbnails import jpeg_data_uri
from fewtune.storage import atomic

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

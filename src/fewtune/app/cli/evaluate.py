"""How good is it: `fewtune evaluate` (a saved classifier on test images), `benchmark` (strategies on
shared N-way K-shot episodes) and `compare` (learning curves and a recommendation). The measuring
lives in :mod:`fewtune.evaluate`; here, flags in and tables out."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fewtune.app.cli.text import err, out
from fewtune.errors import FewtuneError

DATA_HELP = "Labelled images: DATA/<class>/*.jpg or a path,label CSV."


def evaluate(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`.")],
    data: Annotated[
        Path, typer.Argument(help="Labelled test images: DATA/<class>/*.jpg or a path,label CSV.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report here.")] = None,
    dedupe: Annotated[
        bool, typer.Option("--dedupe", help="Leave out test images that are copies of training images.")
    ] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images instead of stopping.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score a classifier on labelled test images: accuracy, balanced accuracy, per-class precision /
    recall / F1, confusion matrix, calibration error and the most confident mistakes. Test classes
    the classifier does not know measure how often it answers "unknown" for them."""
    from fewtune.evaluate.evaluation import evaluate_saved, write_html

    report = evaluate_saved(model, data, skip_bad=skip_bad, progress=not quiet, dedupe=dedupe)
    if report.duplicates_of_training:
        action = "left out (--dedupe)" if dedupe else "kept; --dedupe leaves them out"
        err.print(
            f"warning: {len(report.duplicates_of_training)} test images are copies of training images, "
            f"e.g. {report.duplicates_of_training[0]}; {action}",
            highlight=False,
        )
    if html:
        write_html(report, html, f"fewtune evaluate: {model.name} on {data.name}")
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    out.print(
        f"accuracy {report.accuracy:.1%} on {report.images} images, balanced accuracy "
        f"{report.balanced_accuracy:.1%}; calibration error {report.ece:.1%} (uncalibrated "
        f"{report.ece_uncalibrated:.1%}); known images answered unknown {report.known_rejected:.1%}",
        highlight=False,
    )
    if report.unknown_rejected is not None:
        out.print(
            f"unknown classes {', '.join(report.unknown_classes)}: {report.unknown_rejected:.1%} of "
            f"{report.unknown_images} images answered unknown",
            highlight=False,
        )
    table = Table("class", "precision", "recall", "F1", "images", box=None)
    for s in report.per_class:
        table.add_row(s.label, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}", str(s.support))
    out.print(table)
    matrix = Table("true \\ predicted", *report.classes, box=None)
    for label, row in zip(report.classes, report.confusion, strict=True):
        matrix.add_row(label, *map(str, row))
    out.print(matrix)
    for m in report.mistakes:
        out.print(
            f"  mistake: {m.path} is {m.truth}, predicted {m.predicted} ({m.score:.2f})", highlight=False
        )
    if html:
        err.print(f"wrote {html}", highlight=False)


def benchmark(
    data: Annotated[Path, typer.Argument(help=DATA_HELP)],
    way: Annotated[
        str, typer.Option(help="Classes per episode; comma-separated for several, e.g. 5,20.")
    ] = "5",
    shot: Annotated[
        str, typer.Option(help="Training examples per class; comma-separated, e.g. 1,5.")
    ] = "1,5",
    queries: Annotated[int, typer.Option(min=1, help="Test examples per class and episode.")] = 15,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per setting.")] = 600,
    strategies: Annotated[
        str, typer.Option(help="Comma-separated; NAME or NAME:KEY=VALUE, e.g. probe:l2=0.01.")
    ] = "prototype,probe",
    seed: Annotated[int, typer.Option(help="Seeds the episodes; the same for every strategy.")] = 0,
    save_episodes: Annotated[
        Path | None, typer.Option(help="Write the episodes (class names, file paths) to this JSON file.")
    ] = None,
    load_episodes: Annotated[
        Path | None, typer.Option(help="Run on the episodes in this JSON file instead of sampling.")
    ] = None,
    backbone: Annotated[str, typer.Option(help="Backbone to embed with.")] = "efficientnet_lite0",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the backbone.")] = None,
    dedupe: Annotated[
        bool, typer.Option("--dedupe", help="Leave out query images that duplicate a support image.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print a JSON array: strategy, way, shot, queries, episodes, mean, ci95, seconds."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Episodic N-way K-shot evaluation on your own data: every strategy on exactly the same
    episodes, mean accuracy with a 95% confidence interval. Images are embedded once."""
    from fewtune.evaluate import benchmark as bench
    from fewtune.evaluate.settings import save_episodes as write_episodes

    specs = [s.strip() for s in strategies.split(",") if s.strip()]
    dataset, settings, leaked = bench.prepare_episodes(
        data, specs, ways=None if load_episodes else ints(way, "--way"),
        shots=None if load_episodes else ints(shot, "--shot"), queries=queries, episodes=episodes, seed=seed,
        load_from=load_episodes, dedupe=dedupe,
    )  # fmt: skip
    if leaked:
        action = "left out (--dedupe)" if dedupe else "kept; --dedupe leaves them out"
        err.print(
            f"warning: {leaked} query images duplicate a support image of their episode; {action}",
            highlight=False,
        )
    if save_episodes:
        write_episodes(save_episodes, dataset, settings)
    rows, interrupted = bench.run_benchmark(
        dataset, settings, specs, backbone=backbone, weights=weights, progress=not quiet
    )
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table("strategy", "way", "shot", "accuracy (%)", "episodes", "seconds", box=None)
        for r in rows:
            episodes_done = f"{r['episodes']} (interrupted)" if r.get("interrupted") else str(r["episodes"])
            accuracy = f"{r['mean']:.2f} ± {r['ci95']:.2f}"
            table.add_row(
                r["strategy"], str(r["way"]), str(r["shot"]), accuracy, episodes_done, f"{r['seconds']:.1f}"
            )
        out.print(table)
    if interrupted:
        err.print("interrupted: the results above are what was measured before Ctrl-C")
        raise typer.Exit(130)


def compare(
    data: Annotated[Path, typer.Argument(help=DATA_HELP)],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Report folder: index.html and *.png.")
    ] = Path("report"),
    shots: Annotated[
        str, typer.Option(help="Examples per class to measure, comma-separated.")
    ] = "1,2,5,10,20",
    strategies: Annotated[
        str, typer.Option(help="Comma-separated strategies to compare.")
    ] = "prototype,probe",
    draws: Annotated[
        int, typer.Option(min=2, help="Random draws of training images per point (for the CI).")
    ] = 5,
    test_fraction: Annotated[
        float, typer.Option(min=0.05, max=0.9, help="Share of each class held out for testing.")
    ] = 0.3,
    seed: Annotated[int, typer.Option(help="Seeds the split and the draws.")] = 0,
    backbone: Annotated[str, typer.Option(help="Backbone to embed with.")] = "efficientnet_lite0",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the backbone.")] = None,
    dedupe: Annotated[
        bool, typer.Option("--dedupe", help="Leave out test images that duplicate a training image.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the curve points as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Learning curves: accuracy (95% CI), training time and prediction latency of each strategy
    against examples per class, on a fixed held-out split of your data; writes an HTML report and
    says which strategy to use."""
    from fewtune.evaluate.compare import compare_data
    from fewtune.evaluate.compare_report import write_report

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    result = compare_data(
        data, ints(shots, "--shots"), names, backbone=backbone, weights=weights, draws=draws,
        test_fraction=test_fraction, seed=seed, dedupe=dedupe, progress=not quiet,
    )  # fmt: skip
    if not result.points:
        if result.interrupted:
            err.print("interrupted before any measurement")
            raise typer.Exit(130)
        raise FewtuneError(f"{data}: {result.recommendation}")
    index = write_report(result, output, f"fewtune compare: {data.name}")
    if as_json:
        print(json.dumps([asdict(p) for p in result.points], indent=2))
    else:
        table = Table(
            "strategy", "examples/class", "accuracy (%)", "training (s)", "predict (ms/image)", box=None
        )
        for p in result.points:
            accuracy = f"{p.mean:.2f} ± {p.ci95:.2f}"
            table.add_row(p.strategy, str(p.shots), accuracy, f"{p.train_seconds:.4f}", f"{p.predict_ms:.1f}")
        out.print(table)
        out.print(result.recommendation, highlight=False)
    if result.leaks:
        action = "left out (--dedupe)" if dedupe else "kept; --dedupe leaves them out"
        err.print(
            f"warning: {len(result.leaks)} test images duplicate training images, "
            f"e.g. {result.leaks[0][0]} ~ {result.leaks[0][1]}; {action}",
            highlight=False,
        )
    if result.skipped_shots:
        skipped = ", ".join(map(str, result.skipped_shots))
        err.print(f"skipped --shots {skipped}: some class has too few images", highlight=False)
    err.print(f"wrote {index}", highlight=False)
    if result.interrupted:
        err.print("interrupted: the report holds what was measured before Ctrl-C")
        raise typer.Exit(130)


def ints(text: str, flag: str) -> list[int]:
    """``1,5`` -> [1, 5]; anything else is an error naming ``flag``."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FewtuneError(
            f"{flag} takes whole numbers separated by commas, e.g. 1,5; got {text!r}"
        ) from None

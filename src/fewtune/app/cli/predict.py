"""`fewtune predict`: classify images with a saved classifier; a table, tab-separated rows, JSON or CSV."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fewtune.app.cli.text import err, json_text, out
from fewtune.errors import FewtuneError

if TYPE_CHECKING:
    from fewtune.data.inputs import ImageInput
    from fewtune.model.classifier import Prediction


def predict(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`.")],
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively) or glob patterns; - reads paths from stdin, "
            "one a line."
        ),
    ],
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="How many best classes to show per image.")
    ] = 1,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON array, an object per image: path, label, score, top_k: [{label, score}], "
            "is_unknown, nearest, unknown_probability, novelty, probabilities: {class: p}.",
        ),
    ] = False,
    as_csv: Annotated[
        bool,
        typer.Option(
            "--csv",
            help="Print CSV: path,label,score,top_k (label:score;...),is_unknown,novelty,nearest,"
            "unknown_probability.",
        ),
    ] = False,
    open_set: Annotated[
        bool | None,
        typer.Option(
            "--open-set/--closed-set",
            help="Override the classifier's saved choice of answering the unknown label.",
        ),
    ] = None,
    unknown_threshold: Annotated[
        float | None,
        typer.Option(help="Reject inputs with novelty above this [default: the calibrated threshold]."),
    ] = None,
    unknown_label: Annotated[
        str | None, typer.Option(help="Label for rejected inputs [default: as trained].")
    ] = None,
    transductive: Annotated[
        bool,
        typer.Option(
            "--transductive",
            help="Classify all inputs together, refining the classes on them (PT-MAP-style): "
            "more accurate for a batch of many unlabelled images; each answer then depends on the batch.",
        ),
    ] = False,
    balanced: Annotated[
        bool,
        typer.Option(
            "--balanced",
            help="With --transductive: the inputs hold about as many images of each class. More accurate "
            "when true, much less when not.",
        ),
    ] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images instead of stopping.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Classify images with a saved classifier. Each result has the best label and its probability,
    the top-k classes, every class's probability, a novelty score (higher = less like any class) and
    whether it was rejected as unknown."""
    from fewtune.data.dataset import find_inputs
    from fewtune.model.classifier import load

    if as_json and as_csv:
        raise FewtuneError("--json and --csv both given; choose one output format")
    if balanced and not transductive:
        raise FewtuneError(
            "--balanced is an assumption of --transductive: add --transductive, or drop --balanced"
        )
    named: list[str | Path] = list(with_stdin(inputs))
    classifier = load(model)
    # folders and globs are walked once, here: predict gets the files, and we know what was left out
    paths, left_out = find_inputs(named)
    images: list[ImageInput] = list(paths)
    predictions = classifier.predict(
        images, top_k=top_k, skip_bad=skip_bad, progress=not quiet, open_set=open_set,
        unknown_threshold=unknown_threshold, unknown_label=unknown_label,
        transductive="balanced" if balanced else transductive,
    )  # fmt: skip
    if as_json:
        print(json_text([p.to_dict() for p in predictions]))
    elif as_csv:
        sys.stdout.write(csv_text(predictions))
    else:
        print_predictions(predictions, top_k)
    if not quiet:
        skipped = len(set(map(str, paths))) - len({p.path for p in predictions})
        if skip_bad and skipped:
            err.print(f"skipped {skipped} unreadable images")
        if left_out:
            err.print(
                f"skipped {left_out} entries that are not image files (other or hidden files, FIFOs, "
                "sockets, broken or looping links, folders)"
            )


def csv_text(predictions: list[Prediction]) -> str:
    """``--csv``: a header, then one row per image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["path", "label", "score", "top_k", "is_unknown", "novelty", "nearest", "unknown_probability"]
    )
    for p in predictions:
        top = ";".join(f"{label}:{s:.6f}" for label, s in p.top_k)
        writer.writerow([
            p.path, p.label, f"{p.score:.6f}", top, str(p.is_unknown).lower(), f"{p.novelty:.6f}", p.nearest,
            f"{p.unknown_probability:.6f}",
        ])  # fmt: skip
    return buffer.getvalue()


def print_predictions(predictions: list[Prediction], top_k: int) -> None:
    """A table on a terminal; piped, one tab-separated row per image (a header first), never wrapped."""
    header = ["image", "label", "score", "novelty", *(["next best"] if top_k > 1 else [])]
    rows = []
    for p in predictions:
        label = (
            f"{p.label} (nearest: {p.nearest})" if p.is_unknown else p.label
        )  # score: P(unknown), not the nearest's
        others = ", ".join(f"{name} {s:.2f}" for name, s in p.top_k[1:])
        rows.append([p.path, label, f"{p.score:.3f}", f"{p.novelty:.3f}", *([others] if top_k > 1 else [])])
    if not sys.stdout.isatty():
        # tabs and newlines inside a path would break the columns; they are rare enough to escape
        clean = [[cell.replace("\t", "\\t").replace("\n", "\\n") for cell in row] for row in [header, *rows]]
        sys.stdout.write("".join("\t".join(row) + "\n" for row in clean))
        return
    from rich.text import Text

    table = Table(box=None)
    table.add_column("image", overflow="fold")
    for column in header[1:]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))  # Text: a path with [brackets] is not markup
    out.print(table)


def with_stdin(inputs: list[str]) -> list[str]:
    """Replace a ``-`` argument by the paths read from stdin, one a line (blank lines skipped)."""
    if "-" not in inputs:
        return inputs
    listed = [line.rstrip("\r\n") for line in sys.stdin]
    listed = [line for line in listed if line.strip()]
    if not listed:
        raise FewtuneError(
            "-: no paths on stdin; pipe one image path a line, "
            "e.g. `find photos -name '*.jpg' | fewtune predict MODEL -`"
        )
    expanded: list[str] = []
    for item in inputs:
        expanded.extend(listed if item == "-" else [item])
    return expanded

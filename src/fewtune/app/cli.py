"""The `fewtune` command: a thin layer over the library; every decision lives in the library."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fewtune._version import __version__
from fewtune.errors import FewtuneError
from fewtune.app.outputs import check_model_output, save_error
from fewtune.progress import ProgressBar

app = typer.Typer(
    name="fewtune",
    help="From a handful of labelled images to a classifier you can trust.\n\n"
    "Put a few photos per class in DATA/<class>/, then `fewtune train DATA -o model.fewtune` "
    "and `fewtune predict model.fewtune new_photos/`. Try `fewtune demo` first.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# Paths, labels and class names are the user's, and may hold "[/]" or "[bold red]": markup is off
# everywhere (tables included) and a site that styles text opts in with markup=True, escaping each value.
out = Console(markup=False)  # results: stdout
err = Console(stderr=True, soft_wrap=True, markup=False)  # progress, summaries and errors: stderr, so --json output stays clean


def _version(value: bool) -> None:
    if value:
        print(f"fewtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Folder with one subfolder of images per class, or a CSV with path,label columns.")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Where to save the classifier folder [default: DATA.fewtune].")
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy", "-s",
            help="auto: the strategy most accurate on held-out training examples (recorded in the model); "
            "it fine-tunes the body only when tuning on half the images beats frozen features on the other half (--no-tune: never). "
            "prototype: nearest class mean, no training, works from 1 example per class. "
            "probe: logistic-regression head on frozen features (transfer learning). "
            "finetune: a new head imprinted from the class means; the top of the network fine-tuned "
            "with it when the training images say it pays (the choice is recorded); then the head trained on the result.",
        ),
    ] = "auto",  # fmt: skip
    backbone: Annotated[
        str, typer.Option(help="Registered backbone (efficientnet_lite0/1/2) or any timm architecture with --weights.")
    ] = "efficientnet_lite0",
    weights: Annotated[
        Optional[Path], typer.Option(help="Local .safetensors/.pth weights for the backbone (nothing is downloaded).")
    ] = None,
    l2: Annotated[
        Optional[float], typer.Option(help="probe only: L2 strength [default: chosen by cross-validation, >= 3 images a class].")
    ] = None,
    temperature: Annotated[Optional[float], typer.Option(help="prototype only: softmax temperature [default: 0.1].")] = None,
    unfreeze: Annotated[
        Optional[str],
        typer.Option(help="finetune: body stages to train: auto (decided from the images), none (head only), top:N, all [default: auto]."),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="finetune: passes over the augmented views [default: about 30 steps].")] = None,
    head_epochs: Annotated[Optional[int], typer.Option(help="finetune: head-only steps on cached features [default: 100].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="finetune: head learning rate [default: 0.01].")] = None,
    body_lr: Annotated[Optional[float], typer.Option(help="finetune: learning rate of the top body stage [default: 0.001].")] = None,
    layer_decay: Annotated[Optional[float], typer.Option(help="finetune: learning-rate factor per stage further down [default: 0.7].")] = None,
    augment: Annotated[Optional[str], typer.Option(help="finetune: none, light (crop + small affine, no flip) or strong (+ flip, TrivialAugment) [default: light].")] = None,
    views: Annotated[Optional[int], typer.Option(help="finetune: augmented views per image [default: about 160 in all, 4 to 32 per image].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="finetune: augmented views per step [default: 16].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="finetune: seeds augmentation and sampling [default: 0].")] = None,
    val_split: Annotated[
        Optional[float], typer.Option(help="finetune: share of each class held out for early stopping and best-epoch restore [default: 0].")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="finetune: continue from the checkpoint an interrupted run left (OUTPUT.checkpoint).")] = False,
    lr_find: Annotated[
        Optional[Path],
        typer.Option("--lr-find", help="finetune: run a learning-rate range test instead of training, print the suggested --lr and save the curve to this PNG."),
    ] = None,
    open_set: Annotated[
        bool,
        typer.Option(
            "--open-set/--closed-set",
            help="Open set: predict answers the unknown label for inputs like none of the classes "
            "(threshold calibrated from the training images). Closed set: always one of the classes.",
        ),
    ] = True,
    unknown_label: Annotated[str, typer.Option(help="Label for inputs of no known class; no class may be named so.")] = "unknown",
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images and list them, instead of stopping.")] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse embeddings from the on-disk feature cache.")] = True,
    no_tune: Annotated[
        bool, typer.Option("--no-tune", help="auto: never fine-tune the body (frozen strategies only: seconds, not tens of seconds).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Train a classifier on labelled images and save it as a folder (config.json + safetensors)."""
    from fewtune.model.training import train as train_classifier

    finetune = {"--unfreeze": unfreeze, "--epochs": epochs, "--head-epochs": head_epochs, "--lr": lr, "--body-lr": body_lr,
                "--layer-decay": layer_decay, "--augment": augment, "--views": views, "--batch-size": batch_size, "--seed": seed,
                "--val-split": val_split, "--resume": resume or None, "--lr-find": lr_find}  # fmt: skip
    owners = {"--l2": (l2, "probe"), "--temperature": (temperature, "prototype")}
    owners.update({flag: (value, "finetune") for flag, value in finetune.items()})
    hyperparameters = {}
    for flag, (value, owner) in owners.items():
        if value is not None:
            if strategy != owner:
                raise FewtuneError(f"{flag} applies to --strategy {owner} only, not {strategy}")
            if flag not in ("--resume", "--lr-find"):
                hyperparameters[flag.strip("-").replace("-", "_")] = value
    if no_tune:
        if strategy != "auto":
            raise FewtuneError(f"--no-tune applies to --strategy auto only, not {strategy} (for finetune: --unfreeze none)")
        hyperparameters["candidates"] = ["probe", "prototype"]
    output = output or data.with_name(f"{data.stem}.fewtune")
    if lr_find is not None:
        from fewtune.model.training import find_lr

        found = find_lr(data, backbone=backbone, weights=weights, **hyperparameters)
        found.plot(lr_find)
        out.print(f"suggested --lr {found.suggestion:.2g} (steepest loss descent; curve saved to {lr_find})", highlight=False)
        return
    check_model_output(output)  # now, not after minutes of training
    checkpoint = output.with_name(f"{output.name}.checkpoint")
    if resume and not (checkpoint / "state.json").is_file():
        raise FewtuneError(f"--resume: no checkpoint at {checkpoint}; train without --resume")
    try:
        classifier = train_classifier(
            data, strategy, backbone=backbone, weights=weights, skip_bad=skip_bad, cache=cache, progress=not quiet,
            open_set=open_set, unknown_label=unknown_label, checkpoint=checkpoint if strategy == "finetune" else None,
            resume=resume, notify=None if quiet else lambda message: err.print(message, highlight=False),
            **hyperparameters,
        )  # fmt: skip
    except KeyboardInterrupt as exc:  # typer would swallow the message saying how to resume
        err.print(f"interrupted: {exc}" if str(exc) else "interrupted", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    from fewtune.storage.locks import model_lock

    with model_lock(output, on_wait=_waiting):
        _save(classifier, output)
    shutil.rmtree(checkpoint, ignore_errors=True)  # the saved classifier supersedes it
    if not quiet:
        _print_training_summary(classifier, output)


def _save(classifier, path: Path) -> None:
    try:
        classifier.save(path)
    except OSError as exc:
        raise save_error(path, exc) from None


def _print_training_summary(classifier, output: Path) -> None:
    summary, fit, strategy = classifier.training, classifier.fit_report, classifier.strategy.name
    counts = summary["per_class"]
    err.print(
        f"trained [bold]{escape(strategy)}[/] on {len(counts)} classes, {summary['images']} images "
        f"({summary['embeddings_from_cache']} embeddings from cache) in {summary['seconds']:.1f} s -> [bold]{escape(str(output))}[/]",
        markup=True,
    )
    err.print("  examples per class: " + ", ".join(f"{name} {n}" for name, n in counts.items()), highlight=False)
    for line in _describe_fit(fit):
        err.print(f"  {line}", highlight=False)
    err.print(f"  {_describe_calibration(classifier.calibration)}", highlight=False)
    err.print(f"  {_describe_open_set(classifier.open_set)}", highlight=False)
    if summary["skipped_non_images"]:
        err.print(
            f"  skipped {summary['skipped_non_images']} entries that are not image files (other or hidden files, "
            "FIFOs, sockets, broken or looping links, folders named like images)"
        )
    for bad in summary["bad_images"]:
        err.print(f"  [yellow]skipped bad image[/] {escape(bad['error'])}", highlight=False, markup=True)
    for dup in summary["duplicates_across_classes"]:
        err.print(
            f"  [yellow]warning:[/] identical files under classes {escape(', '.join(dup['classes']))}: {escape(', '.join(dup['paths']))}",
            highlight=False,
            markup=True,
        )


def _describe_fit(fit: dict) -> list[str]:
    """What fitting chose; for ``finetune``, the body and head decisions and how training went."""
    lines = []
    if "chosen" in fit:  # auto
        fit = dict(fit)
        lines.append(f"auto chose {fit.pop('chosen')}: {fit.pop('why', '')}")
        fit.pop("held_out_accuracy", None)
        if skipped := fit.pop("fine-tuning", None):
            lines.append(f"body not fine-tuned: {skipped.get('why', '')}")
    if "body" not in fit:
        return lines + (["fit: " + _human_settings(fit)] if fit else [])
    body, head = fit["body"], fit["head"]
    lines.append(f"body: unfreeze {body.get('unfreeze', 'none')} ({body.get('why', 'as saved')})")
    if result := body.get("result"):
        best = f", kept epoch {result['best_epoch']} (validation accuracy {result['val_accuracy']:.1%})" if result["best_epoch"] is not None else ""
        lines.append(
            f"fine-tuned {result['epochs']} epochs, {result['steps']} steps on {result['views']} augmented views in "
            f"{result['seconds']:.1f} s: loss {result['final_loss']:.3f}, training accuracy {result['train_accuracy']:.1%}{best}"
        )
    lines.append(f"head: {'trained' if head['trained'] else 'imprinted from the class prototypes'} ({head['why']})")
    return lines


def _human(value: object) -> str:
    """A setting as a person would write it: 0.001, yes, 0.01 / 0.1, (a → 1, b → 2); never a Python repr."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " / ".join(_human(v) for v in value)
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} → {_human(v)}" for k, v in value.items()) + ")"
    return str(value)


def _human_settings(settings: dict) -> str:
    """``l2 auto, folds 5, l2 grid 0.0001 / 0.001``: names without underscores, values by :func:`_human`."""
    return ", ".join(f"{str(k).replace('_', ' ')} {_human(v)}" for k, v in settings.items())


def _describe_record(describe, record: dict, name: str):
    """``describe(record)``, or the raw record when it was edited out of the shape describe expects."""
    try:
        return describe(record)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return [f"{name}: {record}"] if describe is _describe_fit else f"{name}: {record}"


def _waiting(message: str) -> None:
    err.print(message, highlight=False, markup=False)


def json_text(data) -> str:
    """``--json`` output: valid JSON always. Python's json would write NaN and Infinity, which
    JSON has not; non-finite numbers are written as the strings "NaN", "Infinity", "-Infinity"
    (which JavaScript's Number() and Python's float() read back)."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(data), indent=2, ensure_ascii=False, allow_nan=False)


def _describe_calibration(calibration: dict) -> str:
    if calibration.get("temperature", 1.0) == 1.0 and "nll_before" not in calibration:
        return f"probabilities: not calibrated ({calibration.get('method', 'none')}); 2+ examples per class enable it"
    method = str(calibration.get("method", "temperature scaling on held-out support predictions"))
    held_out = f"{calibration['held_out_predictions']} " if "held_out_predictions" in calibration else ""
    where = held_out + method.removeprefix("temperature scaling on ")
    kept = f"; {calibration['kept']}" if "kept" in calibration else ""
    return f"probabilities: temperature {calibration['temperature']:.3g}, fitted on {where}{kept}"


def _describe_open_set(settings) -> str:
    if not settings.enabled:
        return f"open set: off (--closed-set); novelty threshold {settings.threshold:.3f} if turned on"
    return (
        f"open set: inputs with novelty > {settings.threshold:.3f} are \"{settings.unknown_label}\" "
        f"({settings.calibration.get('method', '')})"
    )


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`.")],
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns; - reads paths from stdin, one a line.")
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many best classes to show per image.")] = 1,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON array, an object per image: path, label, score, top_k: [{label, score}], "
            "is_unknown, nearest, unknown_probability, novelty, probabilities: {class: p}.",
        )
    ] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV: path,label,score,top_k (label:score;...),is_unknown,novelty,nearest,unknown_probability.")
    ] = False,
    open_set: Annotated[
        Optional[bool],
        typer.Option("--open-set/--closed-set", help="Override the classifier's saved choice of answering the unknown label."),
    ] = None,
    unknown_threshold: Annotated[
        Optional[float], typer.Option(help="Reject inputs with novelty above this [default: the calibrated threshold].")
    ] = None,
    unknown_label: Annotated[Optional[str], typer.Option(help="Label for rejected inputs [default: as trained].")] = None,
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
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images instead of stopping.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Classify images with a saved classifier. Each result has the best label and its probability,
    the top-k classes, every class's probability, a novelty score (higher = less like any class) and
    whether it was rejected as unknown."""
    from fewtune.model.classifier import load

    if as_json and as_csv:
        raise FewtuneError("--json and --csv both given; choose one output format")
    if balanced and not transductive:
        raise FewtuneError("--balanced is an assumption of --transductive: add --transductive, or drop --balanced")
    inputs = _with_stdin(inputs)
    classifier = load(model)
    predictions = classifier.predict(
        inputs, top_k=top_k, skip_bad=skip_bad, progress=not quiet, open_set=open_set, unknown_threshold=unknown_threshold,
        unknown_label=unknown_label, transductive="balanced" if balanced else transductive,
    )  # fmt: skip
    if as_json:
        print(json_text([p.to_dict() for p in predictions]))
    elif as_csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "score", "top_k", "is_unknown", "novelty", "nearest", "unknown_probability"])
        for p in predictions:
            top = ";".join(f"{label}:{s:.6f}" for label, s in p.top_k)
            writer.writerow([p.path, p.label, f"{p.score:.6f}", top, str(p.is_unknown).lower(), f"{p.novelty:.6f}", p.nearest, f"{p.unknown_probability:.6f}"])
        sys.stdout.write(buffer.getvalue())
    else:
        _print_predictions(predictions, top_k)
    if not quiet:
        from fewtune.data.dataset import find_inputs

        paths, left_out = find_inputs(inputs)
        skipped = len(set(map(str, paths))) - len({p.path for p in predictions})
        if skip_bad and skipped:
            err.print(f"skipped {skipped} unreadable images")
        if left_out:
            err.print(f"skipped {left_out} entries that are not image files (other or hidden files, FIFOs, sockets, broken or looping links, folders)")


def _print_predictions(predictions: list, top_k: int) -> None:
    """A table on a terminal; piped, one tab-separated row per image (a header first), never wrapped."""
    header = ["image", "label", "score", "novelty", *(["next best"] if top_k > 1 else [])]
    rows = []
    for p in predictions:
        label = f"{p.label} (nearest: {p.nearest})" if p.is_unknown else p.label  # score: P(unknown), not the nearest's
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


def _with_stdin(inputs: list[str]) -> list[str]:
    """Replace a ``-`` argument by the paths read from stdin, one a line (blank lines skipped)."""
    if "-" not in inputs:
        return inputs
    listed = [line.rstrip("\r\n") for line in sys.stdin]
    listed = [line for line in listed if line.strip()]
    if not listed:
        raise FewtuneError("-: no paths on stdin; pipe one image path a line, e.g. `find photos -name '*.jpg' | fewtune predict MODEL -`")
    expanded: list[str] = []
    for item in inputs:
        expanded.extend(listed if item == "-" else [item])
    return expanded


def _expand(inputs: list[str]) -> list[Path]:
    from fewtune.data.dataset import collect_inputs

    return collect_inputs(inputs)


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole config.json.")] = False,
) -> None:
    """Describe a saved classifier: classes, backbone, strategy, training data. Loads no network."""
    from fewtune.model.classifier import read_config

    config = read_config(model)
    if as_json:
        print(json_text(config))
        return
    backbone, strategy, training = config["backbone"], config["strategy"], config.get("training") or {}
    counts = training.get("per_class") or {}
    from fewtune.model.openset import OpenSet

    settings = {k: v for k, v in strategy["hyperparameters"].items() if k != "tuning"}  # tuning: the body line below
    lines = [
        f"{model}  (format {config['format_version']}, fewtune {config['fewtune_version']})",
        f"  strategy:  {strategy['name']}" + (f" ({_human_settings(settings)})" if settings else ""),
        *(f"  {line}" for line in _describe_record(_describe_fit, strategy.get("fit") or {}, "fit")),
        f"  backbone:  {backbone['name']} ({backbone['timm_name']}, {backbone['embedding_dim']}-d, "
        f"weights sha256 {backbone['weights_sha256'][:12]}…)",
        f"  classes:   {len(config['classes'])}: " + ", ".join(f"{c} ({counts.get(c, '?')})" for c in config["classes"]),
        f"  {_describe_record(_describe_calibration, config['calibration'], 'calibration')}",
        f"  {_describe_open_set(OpenSet(**config['open_set']))}",
    ]
    if training:
        lines.append(f"  trained:   {training.get('created', '?')} on {training.get('images', '?')} images from {training.get('source', '?')}")
    # plain print: no markup to misread in class names, no wrapping at 80 columns when piped
    print("\n".join(lines))


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`.")],
    data: Annotated[Path, typer.Argument(help="Labelled test images: DATA/<class>/*.jpg or a path,label CSV.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
    html: Annotated[Optional[Path], typer.Option(help="Also write a self-contained HTML report here.")] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="Leave out test images that are copies of training images.")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images instead of stopping.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score a classifier on labelled test images: accuracy, balanced accuracy, per-class precision /
    recall / F1, confusion matrix, calibration error and the most confident mistakes. Test classes
    the classifier does not know measure how often it answers "unknown" for them."""
    from fewtune.model.classifier import load
    from fewtune.data.dataset import load_dataset
    from fewtune.evaluate.evaluation import evaluate as run_evaluation
    from fewtune.evaluate.evaluation import write_html

    classifier = load(model)
    test = load_dataset(data, min_classes=1)
    if not set(test.classes) & set(classifier.classes):
        raise FewtuneError(f"{data}: none of its classes ({', '.join(test.classes[:5])}) is one of the classifier's ({', '.join(classifier.classes[:5])})")
    report = run_evaluation(classifier, test, skip_bad=skip_bad, progress=not quiet, dedupe=dedupe)
    if report.duplicates_of_training:
        action = "left out (--dedupe)" if dedupe else "kept; --dedupe leaves them out"
        err.print(f"warning: {len(report.duplicates_of_training)} test images are copies of training images, e.g. {report.duplicates_of_training[0]}; {action}", highlight=False)
    if html:
        write_html(report, html, f"fewtune evaluate: {model.name} on {data.name}")
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        return
    out.print(
        f"accuracy {report.accuracy:.1%} on {report.images} images, balanced accuracy {report.balanced_accuracy:.1%}; "
        f"calibration error {report.ece:.1%} (uncalibrated {report.ece_uncalibrated:.1%}); "
        f"known images answered unknown {report.known_rejected:.1%}",
        highlight=False,
    )
    if report.unknown_rejected is not None:
        out.print(f"unknown classes {', '.join(report.unknown_classes)}: {report.unknown_rejected:.1%} of {report.unknown_images} images answered unknown", highlight=False)
    table = Table("class", "precision", "recall", "F1", "images", box=None)
    for s in report.per_class:
        table.add_row(s.label, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}", str(s.support))
    out.print(table)
    matrix = Table("true \\ predicted", *report.classes, box=None)
    for label, row in zip(report.classes, report.confusion):
        matrix.add_row(label, *map(str, row))
    out.print(matrix)
    for m in report.mistakes:
        out.print(f"  mistake: {m.path} is {m.truth}, predicted {m.predicted} ({m.score:.2f})", highlight=False)
    if html:
        err.print(f"wrote {html}", highlight=False)


@app.command()
def benchmark(
    data: Annotated[Path, typer.Argument(help="Labelled images: DATA/<class>/*.jpg or a path,label CSV.")],
    way: Annotated[str, typer.Option(help="Classes per episode; comma-separated for several, e.g. 5,20.")] = "5",
    shot: Annotated[str, typer.Option(help="Training examples per class; comma-separated, e.g. 1,5.")] = "1,5",
    queries: Annotated[int, typer.Option(min=1, help="Test examples per class and episode.")] = 15,
    episodes: Annotated[int, typer.Option(min=1, help="Episodes per setting.")] = 600,
    strategies: Annotated[str, typer.Option(help="Comma-separated; NAME or NAME:KEY=VALUE, e.g. probe:l2=0.01.")] = "prototype,probe",
    seed: Annotated[int, typer.Option(help="Seeds the episodes; the same for every strategy.")] = 0,
    save_episodes: Annotated[Optional[Path], typer.Option(help="Write the episodes (class names, file paths) to this JSON file.")] = None,
    load_episodes: Annotated[Optional[Path], typer.Option(help="Run on the episodes in this JSON file instead of sampling.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone to embed with.")] = "efficientnet_lite0",
    weights: Annotated[Optional[Path], typer.Option(help="Local weights file for the backbone.")] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="Leave out query images that duplicate a support image.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array: strategy, way, shot, queries, episodes, mean, ci95, seconds.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Episodic N-way K-shot evaluation on your own data: every strategy on exactly the same
    episodes, mean accuracy with a 95% confidence interval. Images are embedded once."""
    from fewtune.evaluate import benchmark as bench
    from fewtune.features.backbones import create_backbone
    from fewtune.data.dataset import load_dataset
    from fewtune.features.embedding import embed_files
    from fewtune.data.leakage import fingerprint

    specs = [s.strip() for s in strategies.split(",") if s.strip()]
    for spec in specs:
        bench.build_strategy(spec)  # a bad name fails before minutes of embedding
    dataset = load_dataset(data)
    if load_episodes:
        settings = bench.load_episodes(load_episodes, dataset)
    else:
        settings = bench.sample_settings(dataset, _ints(way, "--way"), _ints(shot, "--shot"), queries, episodes, seed)
    settings, leaked = bench.guard_leakage(settings, fingerprint(dataset.paths), dedupe)
    if leaked:
        action = "left out (--dedupe)" if dedupe else "kept; --dedupe leaves them out"
        err.print(f"warning: {leaked} query images duplicate a support image of their episode; {action}", highlight=False)
    if save_episodes:
        bench.save_episodes(save_episodes, dataset, settings)
    encoder = create_backbone(backbone, weights)
    features = embed_files(encoder, dataset.paths, progress=not quiet)  # a bad image stops here, named
    rows: list[dict] = []
    interrupted = False
    total = sum(len(s.episodes) for s in settings) * len(specs)
    with ProgressBar("episodes", total, enabled=not quiet) as advance:
        try:
            for setting in settings:
                rows += bench.run_setting(specs, features.features, dataset.labels, setting, advance, bench.Images(encoder, dataset.paths))
        except bench.Interrupted as stop:
            rows += stop.rows
            interrupted = True
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table("strategy", "way", "shot", "accuracy (%)", "episodes", "seconds", box=None)
        for r in rows:
            episodes_done = f"{r['episodes']} (interrupted)" if r.get("interrupted") else str(r["episodes"])
            table.add_row(r["strategy"], str(r["way"]), str(r["shot"]), f"{r['mean']:.2f} ± {r['ci95']:.2f}", episodes_done, f"{r['seconds']:.1f}")
        out.print(table)
    if interrupted:
        err.print("interrupted: the results above are what was measured before Ctrl-C")
        raise typer.Exit(130)


@app.command()
def compare(
    data: Annotated[Path, typer.Argument(help="Labelled images: DATA/<class>/*.jpg or a path,label CSV.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Report folder: index.html and *.png.")] = Path("report"),
    shots: Annotated[str, typer.Option(help="Examples per class to measure, comma-separated.")] = "1,2,5,10,20",
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies to compare.")] = "prototype,probe",
    draws: Annotated[int, typer.Option(min=2, help="Random draws of training images per point (for the CI).")] = 5,
    test_fraction: Annotated[float, typer.Option(min=0.05, max=0.9, help="Share of each class held out for testing.")] = 0.3,
    seed: Annotated[int, typer.Option(help="Seeds the split and the draws.")] = 0,
    backbone: Annotated[str, typer.Option(help="Backbone to embed with.")] = "efficientnet_lite0",
    weights: Annotated[Optional[Path], typer.Option(help="Local weights file for the backbone.")] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="Leave out test images that duplicate a training image.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the curve points as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Learning curves: accuracy (95% CI), training time and prediction latency of each strategy
    against examples per class, on a fixed held-out split of your data; writes an HTML report and
    says which strategy to use."""
    from dataclasses import asdict

    from fewtune.features.backbones import create_backbone
    from fewtune.evaluate.compare import compare as run_compare
    from fewtune.evaluate.compare import write_report
    from fewtune.data.dataset import load_dataset

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    dataset = load_dataset(data)
    counts = _ints(shots, "--shots")
    encoder = create_backbone(backbone, weights)
    with ProgressBar("draws", len(counts) * draws, enabled=not quiet) as advance:
        result = run_compare(
            dataset, encoder, counts, names, draws=draws, test_fraction=test_fraction, seed=seed, dedupe=dedupe,
            progress=not quiet, advance=advance,
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
        table = Table("strategy", "examples/class", "accuracy (%)", "training (s)", "predict (ms/image)", box=None)
        for p in result.points:
            table.add_row(p.strategy, str(p.shots), f"{p.mean:.2f} ± {p.ci95:.2f}", f"{p.train_seconds:.4f}", f"{p.predict_ms:.1f}")
        out.print(table)
        out.print(result.recommendation, highlight=False)
    if result.leaks:
        action = "left out (--dedupe)" if dedupe else "kept; --dedupe leaves them out"
        err.print(f"warning: {len(result.leaks)} test images duplicate training images, e.g. {result.leaks[0][0]} ~ {result.leaks[0][1]}; {action}", highlight=False)
    if result.skipped_shots:
        err.print(f"skipped --shots {', '.join(map(str, result.skipped_shots))}: some class has too few images", highlight=False)
    err.print(f"wrote {index}", highlight=False)
    if result.interrupted:
        err.print("interrupted: the report holds what was measured before Ctrl-C")
        raise typer.Exit(130)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise FewtuneError(f"{flag} takes whole numbers separated by commas, e.g. 1,5; got {text!r}") from None


@app.command()
def add(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`; updated in place.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns showing the class.")],
    label: Annotated[str, typer.Option("--label", "-l", help="The class: a new one, or an existing one to give more examples.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Add a class from as little as one example, or more examples to a class, without retraining
    from the original images: exact for prototype; probe refits its head on stored embeddings."""
    from fewtune.model.classifier import load, read_config
    from fewtune.storage.locks import model_lock

    read_config(model)  # not a model: say so before creating its lock file
    check_model_output(model)
    with model_lock(model, on_wait=_waiting):  # read, change, write: no other writer in between
        classifier = load(model)
        existed = label in classifier.classes
        added = classifier.add_examples(label, inputs, progress=not quiet)
        _save(classifier, model)
    if not quiet:
        verb = "added" if not existed else "extended"
        count = classifier.training["per_class"][label]
        err.print(f"{verb} class {label!r} with {added} images ({count} in all); {len(classifier.classes)} classes -> {model}", highlight=False)


@app.command()
def remove(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`; updated in place.")],
    label: Annotated[str, typer.Option("--label", "-l", help="The class to forget.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary.")] = False,
) -> None:
    """Forget a class and its examples."""
    from fewtune.model.classifier import load, read_config
    from fewtune.storage.locks import model_lock

    read_config(model)  # not a model: say so before creating its lock file
    check_model_output(model)
    with model_lock(model, on_wait=_waiting):
        classifier = load(model)
        classifier.remove_class(label)
        _save(classifier, model)
    if not quiet:
        err.print(f"removed class {label!r}; {len(classifier.classes)} classes left -> {model}", highlight=False)


@app.command()
def serve(
    model: Annotated[Optional[Path], typer.Argument(help="A saved classifier to start from [default: start empty].")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on; the default is this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    strategy: Annotated[str, typer.Option(help="Strategy for a classifier taught from scratch.")] = "prototype",
    models_dir: Annotated[Path, typer.Option(help="Where POST /models/save?name=NAME writes NAME.fewtune.")] = Path("models"),
    token: Annotated[
        Optional[str], typer.Option(envvar="FEWTUNE_TOKEN", help="Require 'Authorization: Bearer TOKEN' on write endpoints.")
    ] = None,
    max_image_mb: Annotated[float, typer.Option(help="Largest accepted upload per image, in MB.")] = 10.0,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body, in MB (also for bodies without Content-Length).")] = 32.0,
    protect_predict: Annotated[bool, typer.Option(help="Require the --token on POST /predict too.")] = False,
    allow_host: Annotated[
        Optional[list[str]],
        typer.Option(metavar="<name>", help="Also answer to this Host name (repeatable; '*' for any). Default: loopback names and --host."),
    ] = None,
    allow_origin: Annotated[
        Optional[list[str]],
        typer.Option(metavar="<origin>", help="Also accept writes from pages of this origin, e.g. https://app.example (repeatable; '*' for any)."),
    ] = None,
) -> None:
    """Serve an HTTP API (OpenAPI docs at /docs) and a web page at / where you teach and test a
    classifier: add classes from one photo each, drop test photos, save the model.

    Only pages served by this server may send it writes, and only at a Host name it answers to
    (loopback names and --host); list others with --allow-host / --allow-origin."""
    try:
        import uvicorn

        from fewtune.app.origins import default_hosts
        from fewtune.app.server import ServerConfig, create_app
    except ImportError:
        raise FewtuneError("the server needs its extra: pip install 'fewtune[serve]'") from None
    from fewtune.features.backbones import create_backbone
    from fewtune.model.classifier import load
    from fewtune.strategies import create_strategy

    create_strategy(strategy)
    if protect_predict and not token:
        raise FewtuneError("--protect-predict needs a token: add --token TOKEN (or set FEWTUNE_TOKEN)")
    if max_image_mb <= 0 or max_request_mb < max_image_mb:
        raise FewtuneError("--max-request-mb must be at least --max-image-mb, and both above 0")
    classifier = load(model) if model else None
    backbone = classifier.backbone if classifier else create_backbone()
    config = ServerConfig(
        strategy=strategy,
        model_path=model,
        models_dir=models_dir,
        token=token,
        protect_predict=protect_predict,
        max_image_bytes=int(max_image_mb * 1024 * 1024),
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        allow_hosts=default_hosts(host) + list(allow_host or []),
        allow_origins=list(allow_origin or []),
    )
    err.print(f"fewtune serving on http://{host}:{port}/  (API docs: /docs)", highlight=False)
    if host in ("0.0.0.0", "::") and not allow_host:
        err.print(
            "note: it answers only to Host names " + ", ".join(config.allow_hosts) + "; to reach it by another "
            "name or address (DNS rebinding guard), add --allow-host NAME",
            highlight=False,
            markup=False,
        )
    uvicorn.run(create_app(backbone, classifier, config), host=host, port=port, log_level="warning")


@app.command()
def demo(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also save the last classifier trained here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Teach fewtune six objects from ONE photo each (bundled Caltech-101 photos), then from three,
    and classify photos it has never seen."""
    from fewtune.features.backbones import create_backbone
    from fewtune.app.demo import SHOTS, demo_photos, run_demo, run_open_set_demo

    if output:
        check_model_output(output)
    photos = demo_photos()
    out.print(f"Demo photos: {photos} (Caltech-101, CC BY 4.0)", highlight=False)
    out.print("Teaching one photo per class:", highlight=False)
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        out.print(f"  {folder.name:<11} <- {min(folder.iterdir()).name}", highlight=False)
    backbone = create_backbone()
    results = run_demo(backbone, progress=not quiet)
    table = Table("strategy", "photos per class", "accuracy on unseen photos", "seconds", title="Results", box=None)
    for r in results:
        table.add_row(r.strategy, str(r.shots), f"{r.accuracy:.1%} ({r.tested - len(r.mistakes)}/{r.tested})", f"{r.seconds:.1f}")
    out.print(table)
    for r in results:
        for path, truth, predicted, score in r.mistakes:
            out.print(
                f"  {r.strategy}, {r.shots}-shot: {path.parent.name}/{path.name} is a {truth}, predicted {predicted} ({score:.2f})",
                highlight=False,
            )
    if not any(r.mistakes for r in results):
        out.print("No mistakes.")
    known, rejected, shown = run_open_set_demo(backbone)
    out.print(
        f"None of these: taught only {', '.join(known)} ({max(SHOTS)} photos each), it called "
        f"{rejected} of {shown} watch photos 'unknown'.",
        highlight=False,
    )
    if output:
        _save(results[-1].classifier, output)
        out.print(f"saved the {results[-1].strategy} classifier ({max(SHOTS)} photos per class) to {output}", highlight=False)
    out.print("Next: put a few photos per class in DATA/<class>/ and run `fewtune train DATA -o model.fewtune`.")


cache_app = typer.Typer(help="Look at or empty the on-disk cache of image embeddings.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info() -> None:
    """Where the feature cache is, what it holds and its size cap ($FEWTUNE_CACHE_MAX_MB, default 2048)."""
    from datetime import datetime, timezone

    from fewtune.features.cache import default_cache_dir, describe, max_cache_bytes

    folder, cap = default_cache_dir(), max_cache_bytes()
    files = describe(folder)
    source = "FEWTUNE_CACHE_MAX_MB" if os.environ.get("FEWTUNE_CACHE_MAX_MB", "").strip() else "default; set FEWTUNE_CACHE_MAX_MB to change"
    out.print(f"feature cache: {folder}", highlight=False, soft_wrap=True)
    out.print(f"  size: {_megabytes(sum(f.bytes for f in files))} of {_megabytes(cap)} ({source}); least recently used rows go first", highlight=False, soft_wrap=True)
    for f in files:
        rows = "unreadable, replaced on next use" if f.rows is None else f"{f.rows} embeddings"
        used = f", last used {datetime.fromtimestamp(f.last_used, timezone.utc):%Y-%m-%d %H:%M} UTC" if f.last_used else ""
        out.print(f"  {f.path.name}: {rows}, {_megabytes(f.bytes)}{used}", highlight=False, soft_wrap=True)
    if not files:
        out.print("  empty", highlight=False, soft_wrap=True)


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete the cached embeddings (only fewtune's files in the cache folder); they are recomputed when needed."""
    from fewtune.features.cache import clear, default_cache_dir

    folder = default_cache_dir()
    files, freed = clear(folder)
    out.print(f"cleared {files} cache files, {_megabytes(freed)} freed in {folder}", highlight=False, soft_wrap=True)


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB"


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2 with one line, a bug exits 1."""
    try:
        app(args=argv, prog_name="fewtune")
    except FewtuneError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, markup=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("FEWTUNE_DEBUG"):
            raise
        err.print(
            f"[red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (a bug in fewtune; rerun with FEWTUNE_DEBUG=1 "
            "for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
            markup=True,
        )
        sys.exit(1)

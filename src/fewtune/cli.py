"""The `fewtune` command: a thin layer over the library; every decision lives in the library."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from fewtune._version import __version__
from fewtune.errors import FewtuneError

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
out = Console()  # results: stdout
err = Console(stderr=True)  # progress, summaries and errors: stderr, so --json output stays clean


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
            help="prototype: nearest class mean, no training, works from 1 example per class. "
            "probe: logistic-regression head on frozen features (transfer learning).",
        ),
    ] = "prototype",  # fmt: skip
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
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images and list them, instead of stopping.")] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse embeddings from the on-disk feature cache.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Train a classifier on labelled images and save it as a folder (config.json + safetensors)."""
    from fewtune.trainer import train as train_classifier

    hyperparameters = {}
    for flag, value, owner in (("--l2", l2, "probe"), ("--temperature", temperature, "prototype")):
        if value is not None:
            if strategy != owner:
                raise FewtuneError(f"{flag} applies to --strategy {owner} only, not {strategy}")
            hyperparameters[flag.strip("-")] = value
    output = output or data.with_name(f"{data.stem}.fewtune")
    classifier = train_classifier(
        data, strategy, backbone=backbone, weights=weights, skip_bad=skip_bad, cache=cache, progress=not quiet,
        **hyperparameters,
    )  # fmt: skip
    classifier.save(output)
    if not quiet:
        _print_training_summary(classifier.training, classifier.fit_report, strategy, output)


def _print_training_summary(summary: dict, fit: dict, strategy: str, output: Path) -> None:
    counts = summary["per_class"]
    err.print(
        f"trained [bold]{strategy}[/] on {len(counts)} classes, {summary['images']} images "
        f"({summary['embeddings_from_cache']} embeddings from cache) in {summary['seconds']:.1f} s -> [bold]{output}[/]"
    )
    err.print("  examples per class: " + ", ".join(f"{name} {n}" for name, n in counts.items()), highlight=False)
    if fit:
        err.print("  fit: " + ", ".join(f"{k}={v}" for k, v in fit.items()), highlight=False)
    if summary["skipped_non_images"]:
        err.print(f"  skipped {summary['skipped_non_images']} non-image or hidden files")
    for bad in summary["bad_images"]:
        err.print(f"  [yellow]skipped bad image[/] {bad['error']}", highlight=False)
    for dup in summary["duplicates_across_classes"]:
        err.print(
            f"  [yellow]warning:[/] identical files under classes {', '.join(dup['classes'])}: {', '.join(dup['paths'])}",
            highlight=False,
        )


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many best classes to show per image.")] = 1,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON array: {path, label, score, top_k: [{label, score}]} per image.")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV: path,label,score,top_k (label:score;...).")] = False,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images instead of stopping.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Classify images with a saved classifier."""
    from fewtune.classifier import load

    if as_json and as_csv:
        raise FewtuneError("--json and --csv both given; choose one output format")
    classifier = load(model)
    predictions = classifier.predict(inputs, top_k=top_k, skip_bad=skip_bad, progress=not quiet)
    if as_json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2, ensure_ascii=False))
    elif as_csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "score", "top_k"])
        for p in predictions:
            writer.writerow([p.path, p.label, f"{p.score:.6f}", ";".join(f"{label}:{s:.6f}" for label, s in p.top_k)])
        sys.stdout.write(buffer.getvalue())
    else:
        table = Table(box=None)
        table.add_column("image", overflow="fold")
        for column in ("label", "score", *(["next best"] if top_k > 1 else [])):
            table.add_column(column)
        for p in predictions:
            others = ", ".join(f"{label} {s:.2f}" for label, s in p.top_k[1:])
            table.add_row(p.path, p.label, f"{p.score:.3f}", *([others] if top_k > 1 else []))
        out.print(table)
    if skip_bad and not quiet:
        predicted = {p.path for p in predictions}
        skipped = len(set(map(str, _expand(inputs)))) - len(predicted)
        if skipped:
            err.print(f"skipped {skipped} unreadable images")


def _expand(inputs: list[str]) -> list[Path]:
    from fewtune.dataset import collect_inputs

    return collect_inputs(inputs)


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="A classifier folder saved by `fewtune train`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole config.json.")] = False,
) -> None:
    """Describe a saved classifier: classes, backbone, strategy, training data. Loads no network."""
    from fewtune.classifier import read_config

    config = read_config(model)
    if as_json:
        print(json.dumps(config, indent=2, ensure_ascii=False))
        return
    backbone, strategy, training = config["backbone"], config["strategy"], config.get("training", {})
    counts = training.get("per_class", {})
    out.print(f"[bold]{model}[/]  (format {config['format_version']}, fewtune {config['fewtune_version']})", highlight=False)
    out.print(f"  strategy:  {strategy['name']} {strategy['hyperparameters']}", highlight=False)
    if strategy.get("fit"):
        out.print(f"  fit:       {strategy['fit']}", highlight=False)
    out.print(
        f"  backbone:  {backbone['name']} ({backbone['timm_name']}, {backbone['embedding_dim']}-d, "
        f"weights sha256 {backbone['weights_sha256'][:12]}…)",
        highlight=False,
    )
    out.print(f"  classes:   {len(config['classes'])}: " + ", ".join(f"{c} ({counts.get(c, '?')})" for c in config["classes"]), highlight=False)
    if training:
        out.print(f"  trained:   {training.get('created', '?')} on {training.get('images', '?')} images from {training.get('source', '?')}", highlight=False)


@app.command()
def demo(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also save the last classifier trained here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Teach fewtune six objects from ONE photo each (bundled Caltech-101 photos), then from three,
    and classify photos it has never seen."""
    from fewtune.demo import SHOTS, demo_photos, run_demo

    photos = demo_photos()
    out.print(f"Demo photos: {photos} (Caltech-101, CC BY 4.0)", highlight=False)
    out.print("Teaching one photo per class:", highlight=False)
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        out.print(f"  {folder.name:<11} <- {min(folder.iterdir()).name}", highlight=False)
    results = run_demo(progress=not quiet)
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
    if output:
        results[-1].classifier.save(output)
        out.print(f"saved the {results[-1].strategy} classifier ({max(SHOTS)} photos per class) to {output}", highlight=False)
    out.print("Next: put a few photos per class in DATA/<class>/ and run `fewtune train DATA -o model.fewtune`.")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2 with one line, a bug exits 1."""
    try:
        app(args=argv, prog_name="fewtune")
    except FewtuneError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("FEWTUNE_DEBUG"):
            raise
        err.print(
            f"[red]internal error:[/] {type(exc).__name__}: {exc} (a bug in fewtune; rerun with FEWTUNE_DEBUG=1 "
            "for the traceback and report it)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)

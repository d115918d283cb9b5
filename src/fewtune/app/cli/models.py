"""A saved classifier: `fewtune info` describes it; `fewtune add` and `remove` change its classes in place."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fewtune.app.cli.text import (
    describe_calibration,
    describe_fit,
    describe_open_set,
    describe_record,
    err,
    human_settings,
    json_text,
    waiting,
)
from fewtune.app.outputs import check_model_output, save

if TYPE_CHECKING:
    from fewtune.data.inputs import ImageInput

MODEL_IN_PLACE = "A classifier folder saved by `fewtune train`; updated in place."


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

    settings = {
        k: v for k, v in strategy["hyperparameters"].items() if k != "tuning"
    }  # tuning: the body line below
    classes = ", ".join(f"{c} ({counts.get(c, '?')})" for c in config["classes"])
    lines = [
        f"{model}  (format {config['format_version']}, fewtune {config['fewtune_version']})",
        f"  strategy:  {strategy['name']}" + (f" ({human_settings(settings)})" if settings else ""),
        *(f"  {line}" for line in describe_record(describe_fit, strategy.get("fit") or {}, "fit")),
        f"  backbone:  {backbone['name']} ({backbone['timm_name']}, {backbone['embedding_dim']}-d, "
        f"weights sha256 {backbone['weights_sha256'][:12]}…)",
        f"  classes:   {len(config['classes'])}: {classes}",
        f"  {describe_record(describe_calibration, config['calibration'], 'calibration')}",
        f"  {describe_open_set(OpenSet(**config['open_set']))}",
    ]
    if training:
        lines.append(
            f"  trained:   {training.get('created', '?')} on {training.get('images', '?')} images "
            f"from {training.get('source', '?')}"
        )
    # plain print: no markup to misread in class names, no wrapping at 80 columns when piped
    print("\n".join(lines))


def add(
    model: Annotated[Path, typer.Argument(help=MODEL_IN_PLACE)],
    inputs: Annotated[
        list[str], typer.Argument(help="Image files, folders or glob patterns showing the class.")
    ],
    label: Annotated[
        str,
        typer.Option("--label", "-l", help="The class: a new one, or an existing one to give more examples."),
    ],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Add a class from as little as one example, or more examples to a class, without retraining
    from the original images: exact for prototype; probe refits its head on stored embeddings."""
    from fewtune.model.classifier import load, read_config
    from fewtune.storage.locks import model_lock

    read_config(model)  # not a model: say so before creating its lock file
    check_model_output(model)
    images: list[ImageInput] = list(inputs)
    with model_lock(model, on_wait=waiting):  # read, change, write: no other writer in between
        classifier = load(model)
        existed = label in classifier.classes
        added = classifier.add_examples(label, images, progress=not quiet)
        save(classifier, model)
    if not quiet:
        verb = "added" if not existed else "extended"
        count = classifier.training["per_class"][label]
        err.print(
            f"{verb} class {label!r} with {added} images ({count} in all); "
            f"{len(classifier.classes)} classes -> {model}",
            highlight=False,
        )


def remove(
    model: Annotated[Path, typer.Argument(help=MODEL_IN_PLACE)],
    label: Annotated[str, typer.Option("--label", "-l", help="The class to forget.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary.")] = False,
) -> None:
    """Forget a class and its examples."""
    from fewtune.model.classifier import load, read_config
    from fewtune.storage.locks import model_lock

    read_config(model)  # not a model: say so before creating its lock file
    check_model_output(model)
    with model_lock(model, on_wait=waiting):
        classifier = load(model)
        classifier.remove_class(label)
        save(classifier, model)
    if not quiet:
        err.print(
            f"removed class {label!r}; {len(classifier.classes)} classes left -> {model}", highlight=False
        )

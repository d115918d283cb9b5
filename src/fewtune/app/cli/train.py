"""`fewtune train`: labelled images in, a saved classifier out, and a summary of what was chosen."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from fewtune.app.cli.text import describe_calibration, describe_fit, describe_open_set, err, out, waiting
from fewtune.app.outputs import check_model_output, save
from fewtune.errors import FewtuneError

if TYPE_CHECKING:
    from fewtune.model.classifier import Classifier

STRATEGY_HELP = (
    "auto: the strategy most accurate on held-out training examples (recorded in the model); "
    "it fine-tunes the body only when tuning on half the images beats frozen features on the other half "
    "(--no-tune: never). "
    "prototype: nearest class mean, no training, works from 1 example per class. "
    "probe: logistic-regression head on frozen features (transfer learning). "
    "finetune: a new head imprinted from the class means; the top of the network fine-tuned "
    "with it when the training images say it pays (the choice is recorded); "
    "then the head trained on the result."
)


def train(
    data: Annotated[
        Path,
        typer.Argument(
            help="Folder with one subfolder of images per class, or a CSV with path,label columns."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to save the classifier folder [default: DATA.fewtune]."),
    ] = None,
    strategy: Annotated[str, typer.Option("--strategy", "-s", help=STRATEGY_HELP)] = "auto",
    backbone: Annotated[
        str,
        typer.Option(
            help="Registered backbone (efficientnet_lite0/1/2) or any timm architecture with --weights."
        ),
    ] = "efficientnet_lite0",
    weights: Annotated[
        Path | None,
        typer.Option(help="Local .safetensors/.pth weights for the backbone (nothing is downloaded)."),
    ] = None,
    l2: Annotated[
        float | None,
        typer.Option(
            help="probe only: L2 strength [default: chosen by cross-validation, >= 3 images a class]."
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="prototype only: softmax temperature [default: 0.1].")
    ] = None,
    unfreeze: Annotated[
        str | None,
        typer.Option(
            help="finetune: body stages to train: auto (decided from the images), none (head only), "
            "top:N, all [default: auto]."
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="finetune: passes over the augmented views [default: about 30 steps].")
    ] = None,
    head_epochs: Annotated[
        int | None, typer.Option(help="finetune: head-only steps on cached features [default: 100].")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="finetune: head learning rate [default: 0.01].")] = None,
    body_lr: Annotated[
        float | None, typer.Option(help="finetune: learning rate of the top body stage [default: 0.001].")
    ] = None,
    layer_decay: Annotated[
        float | None,
        typer.Option(help="finetune: learning-rate factor per stage further down [default: 0.7]."),
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            help="finetune: none, light (crop + small affine, no flip) or strong (+ flip, TrivialAugment) "
            "[default: light]."
        ),
    ] = None,
    views: Annotated[
        int | None,
        typer.Option(
            help="finetune: augmented views per image [default: about 160 in all, 4 to 32 per image]."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="finetune: augmented views per step [default: 16].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="finetune: seeds augmentation and sampling [default: 0].")
    ] = None,
    val_split: Annotated[
        float | None,
        typer.Option(
            help="finetune: share of each class held out for early stopping and best-epoch restore "
            "[default: 0]."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="finetune: continue from the checkpoint an interrupted run left (OUTPUT.checkpoint).",
        ),
    ] = False,
    lr_find: Annotated[
        Path | None,
        typer.Option(
            "--lr-find",
            help="finetune: run a learning-rate range test instead of training, print the suggested --lr "
            "and save the curve to this PNG.",
        ),
    ] = None,
    open_set: Annotated[
        bool,
        typer.Option(
            "--open-set/--closed-set",
            help="Open set: predict answers the unknown label for inputs like none of the classes "
            "(threshold calibrated from the training images). Closed set: always one of the classes.",
        ),
    ] = True,
    unknown_label: Annotated[
        str, typer.Option(help="Label for inputs of no known class; no class may be named so.")
    ] = "unknown",
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images and list them, instead of stopping.")
    ] = False,
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Reuse embeddings from the on-disk feature cache.")
    ] = True,
    no_tune: Annotated[
        bool,
        typer.Option(
            "--no-tune",
            help="auto: never fine-tune the body (frozen strategies only: seconds, not tens of seconds).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Train a classifier on labelled images and save it as a folder (config.json + safetensors)."""
    from fewtune.model.training import train as train_classifier

    finetune = {"--unfreeze": unfreeze, "--epochs": epochs, "--head-epochs": head_epochs, "--lr": lr,
                "--body-lr": body_lr, "--layer-decay": layer_decay, "--augment": augment, "--views": views,
                "--batch-size": batch_size, "--seed": seed, "--val-split": val_split,
                "--resume": resume or None, "--lr-find": lr_find}  # fmt: skip
    owners: dict[str, tuple[object, str]] = {
        "--l2": (l2, "probe"),
        "--temperature": (temperature, "prototype"),
    }
    owners.update({flag: (value, "finetune") for flag, value in finetune.items()})
    hyperparameters: dict[str, Any] = {}
    for flag, (value, owner) in owners.items():
        if value is not None:
            if strategy != owner:
                raise FewtuneError(f"{flag} applies to --strategy {owner} only, not {strategy}")
            if flag not in ("--resume", "--lr-find"):
                hyperparameters[flag.strip("-").replace("-", "_")] = value
    if no_tune:
        if strategy != "auto":
            raise FewtuneError(
                f"--no-tune applies to --strategy auto only, not {strategy} (for finetune: --unfreeze none)"
            )
        hyperparameters["candidates"] = ["probe", "prototype"]
    output = output or data.with_name(f"{data.stem}.fewtune")
    if lr_find is not None:
        from fewtune.model.training import find_lr

        found = find_lr(data, backbone=backbone, weights=weights, **hyperparameters)
        found.plot(lr_find)
        out.print(
            f"suggested --lr {found.suggestion:.2g} (steepest loss descent; curve saved to {lr_find})",
            highlight=False,
        )
        return
    check_model_output(output)  # now, not after minutes of training
    checkpoint = output.with_name(f"{output.name}.checkpoint")
    if resume and not (checkpoint / "state.json").is_file():
        raise FewtuneError(f"--resume: no checkpoint at {checkpoint}; train without --resume")
    try:
        classifier = train_classifier(
            data, strategy, backbone=backbone, weights=weights, skip_bad=skip_bad, cache=cache,
            progress=not quiet, open_set=open_set, unknown_label=unknown_label,
            checkpoint=checkpoint if strategy == "finetune" else None, resume=resume,
            notify=None if quiet else lambda message: err.print(message, highlight=False),
            **hyperparameters,
        )  # fmt: skip
    except KeyboardInterrupt as exc:  # typer would swallow the message saying how to resume
        err.print(f"interrupted: {exc}" if str(exc) else "interrupted", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    from fewtune.storage.locks import model_lock

    with model_lock(output, on_wait=waiting):
        save(classifier, output)
    shutil.rmtree(checkpoint, ignore_errors=True)  # the saved classifier supersedes it
    if not quiet:
        print_training_summary(classifier, output)


def print_training_summary(classifier: Classifier, output: Path) -> None:
    summary, fit, strategy = classifier.training, classifier.fit_report, classifier.strategy.name
    counts = summary["per_class"]
    err.print(
        f"trained [bold]{escape(strategy)}[/] on {len(counts)} classes, {summary['images']} images "
        f"({summary['embeddings_from_cache']} embeddings from cache) in {summary['seconds']:.1f} s "
        f"-> [bold]{escape(str(output))}[/]",
        markup=True,
    )
    err.print(
        "  examples per class: " + ", ".join(f"{name} {n}" for name, n in counts.items()), highlight=False
    )
    for line in describe_fit(fit):
        err.print(f"  {line}", highlight=False)
    err.print(f"  {describe_calibration(classifier.calibration)}", highlight=False)
    err.print(f"  {describe_open_set(classifier.open_set)}", highlight=False)
    if summary["skipped_non_images"]:
        err.print(
            f"  skipped {summary['skipped_non_images']} entries that are not image files "
            "(other or hidden files, FIFOs, sockets, broken or looping links, folders named like images)"
        )
    for bad in summary["bad_images"]:
        err.print(f"  [yellow]skipped bad image[/] {escape(bad['error'])}", highlight=False, markup=True)
    for dup in summary["duplicates_across_classes"]:
        err.print(
            f"  [yellow]warning:[/] identical files under classes {escape(', '.join(dup['classes']))}: "
            f"{escape(', '.join(dup['paths']))}",
            highlight=False,
            markup=True,
        )

"""`fewtune demo`: the bundled photos taught from one example each, then three, and the results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fewtune.app.cli.text import out
from fewtune.app.outputs import check_model_output, save


def demo(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also save the last classifier trained here.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Teach fewtune six objects from ONE photo each (bundled Caltech-101 photos), then from three,
    and classify photos it has never seen."""
    from fewtune.app.demo import SHOTS, demo_photos, run_demo, run_open_set_demo
    from fewtune.features.backbones import create_backbone

    if output:
        check_model_output(output)
    photos = demo_photos()
    out.print(f"Demo photos: {photos} (Caltech-101, CC BY 4.0)", highlight=False)
    out.print("Teaching one photo per class:", highlight=False)
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        out.print(f"  {folder.name:<11} <- {min(folder.iterdir()).name}", highlight=False)
    backbone = create_backbone()
    results = run_demo(backbone, progress=not quiet)
    table = Table(
        "strategy", "photos per class", "accuracy on unseen photos", "seconds", title="Results", box=None
    )
    for r in results:
        accuracy = f"{r.accuracy:.1%} ({r.tested - len(r.mistakes)}/{r.tested})"
        table.add_row(r.strategy, str(r.shots), accuracy, f"{r.seconds:.1f}")
    out.print(table)
    for r in results:
        for path, truth, predicted, score in r.mistakes:
            out.print(
                f"  {r.strategy}, {r.shots}-shot: {path.parent.name}/{path.name} is a {truth}, "
                f"predicted {predicted} ({score:.2f})",
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
        last = results[-1]
        save(last.classifier, output)
        out.print(
            f"saved the {last.strategy} classifier ({max(SHOTS)} photos per class) to {output}",
            highlight=False,
        )
    out.print(
        "Next: put a few photos per class in DATA/<class>/ and run `fewtune train DATA -o model.fewtune`."
    )

"""Check where a classifier will be saved before any work, so minutes of training are never lost to
an output path that could not take it (``-o /``, a file, a read-only folder)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fewtune.errors import FewtuneError

if TYPE_CHECKING:
    from fewtune.model.classifier import Classifier


def check_model_output(path: str | Path) -> Path:
    """Raise now if a classifier cannot be saved at ``path``; return it unchanged otherwise.

    Accepted: a new path under a folder one can write to (missing parent folders are created at
    save time), an existing classifier folder (replaced), or an empty folder.

    Raises:
        FewtuneError: ``path`` is the root folder, an existing file or non-classifier folder, or its
            nearest existing parent is not a folder one can write to.
    """
    path = Path(path)
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on Python < 3.13
        raise FewtuneError(f"{path}: cannot be resolved ({exc}); choose another output path") from None
    if not path.name or resolved == Path(resolved.anchor) or path.name == "..":
        raise FewtuneError(
            f"{path}: cannot save a classifier as this folder itself; pass a new path, e.g. -o model.fewtune"
        )
    if os.path.lexists(path):
        if not path.is_dir():
            raise FewtuneError(
                f"{path}: exists and is not a fewtune classifier (it is a file); choose another output path"
            )
        try:
            foreign = not (path / "config.json").is_file() and any(path.iterdir())
        except OSError as exc:
            raise FewtuneError(
                f"{path}: cannot read the folder ({exc.strerror}); choose another output path"
            ) from None
        if foreign:
            raise FewtuneError(
                f"{path}: exists and is not a fewtune classifier; choose another output path, or remove it"
            )
    parent = resolved.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise FewtuneError(f"{path}: {parent} is not a folder; choose another output path")
    try:  # the save writes a staging folder beside the model, then renames it: try exactly that
        probe = tempfile.mkdtemp(prefix=".fewtune-write-check-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise FewtuneError(
            f"{path}: cannot write to {parent} ({exc.strerror}); choose an output folder you can write to"
        ) from None
    return path


def save_error(path: str | Path, exc: OSError) -> FewtuneError:
    """A failed save (disk full, permissions changed meanwhile) as the one-line error the CLI prints."""
    return FewtuneError(
        f"{path}: could not save the classifier ({exc.strerror or exc}); "
        "free space or choose another output path"
    )


def save(classifier: Classifier, path: Path) -> None:
    """``classifier.save(path)``, a failure said in one line (see :func:`save_error`)."""
    try:
        classifier.save(path)
    except OSError as exc:
        raise save_error(path, exc) from None

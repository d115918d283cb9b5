"""Labelled images on disk: a folder with one subfolder per class, or a CSV of ``path,label``."""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from fewtune.data.images import is_image_path, special_kind
from fewtune.errors import FewtuneError


@dataclass(frozen=True)
class Dataset:
    """Image paths with integer labels into ``classes`` (sorted, so the order is reproducible).

    Attributes:
        skipped: entries left out: files that are not images or are hidden, FIFOs, sockets,
            broken or looping links, folders named like images (``x.jpg/``, whose images are kept).
    """

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    source: Path
    skipped: int = 0

    def counts(self) -> dict[str, int]:
        """Images per class."""
        counts = dict.fromkeys(self.classes, 0)
        for label in self.labels:
            counts[self.classes[label]] += 1
        return counts


def load_dataset(source: str | Path, min_classes: int = 2) -> Dataset:
    """Find the labelled images under a folder (``<class>/*.jpg``) or listed in a CSV file.

    Args:
        min_classes: fewer classes is an error (training needs two; a test set may have one).

    Raises:
        FewtuneError: the source is missing or empty, a class has no images, or there is only one class.
    """
    source = Path(source)
    if not source.exists():
        raise FewtuneError(
            f"{source}: no such file or folder; pass a folder with one subfolder per class, or a CSV"
        )
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise FewtuneError(
                f"{source}: expected a folder with one subfolder per class, or a .csv with path,label columns"
            )
        by_class, skipped = _from_csv(source)
    else:
        by_class, skipped = _from_folder(source)
    if len(by_class) < min_classes:
        only = f" (only {next(iter(by_class))!r})" if by_class else ""
        raise FewtuneError(
            f"{source}: found one class{only}; a classifier needs at least two classes, one subfolder each"
        )
    classes = sorted(by_class)
    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in by_class[name]:
            paths.append(path)
            labels.append(index)
    return Dataset(paths=paths, labels=labels, classes=classes, source=source, skipped=skipped)


def _from_folder(root: Path) -> tuple[dict[str, list[Path]], int]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = [p for p in root.iterdir() if p.is_file() and is_image_path(p)]
        hint = (
            f" (it holds {len(loose)} loose images: move them into one subfolder per class)" if loose else ""
        )
        raise FewtuneError(f"{root}: no class subfolders found{hint}; expected {root}/<class>/<image>.jpg")
    by_class: dict[str, list[Path]] = {}
    skipped = 0
    for folder in folders:
        found, left_out = walk_images(folder)
        skipped += left_out
        if not found:
            raise FewtuneError(
                f"{folder}: class {folder.name!r} has no images (.jpg, .png, .webp, .bmp, .gif, .tif); "
                "add at least one or remove the folder"
            )
        by_class[folder.name] = found
    return by_class, skipped


def walk_images(folder: Path) -> tuple[list[Path], int]:
    """The visible image files under ``folder`` (sorted), and how many other entries were left out.

    Links to folders are followed, each folder walked once; a link to ``folder`` itself or above it
    is left out and counted (it would add other classes' images, or loop), so no walk is endless.
    Entries are judged by ``stat`` alone, never opened: a FIFO named ``x.jpg`` would block the
    reader. Hidden entries are left out with all they hold.
    """
    found: list[Path] = []
    skipped = 0
    walked: set[tuple[int, int]] = set()
    top = folder.resolve()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            status = current.stat()
            if (status.st_dev, status.st_ino) in walked:
                skipped += 1
                continue
            walked.add((status.st_dev, status.st_ino))
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:  # unreadable folder: left out, counted
            skipped += 1
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                skipped += 1
                continue
            kind = special_kind(path)
            if kind == "a folder":
                skipped += is_image_path(path)  # "x.jpg/" is no image, though the images inside it are
                if entry.is_symlink() and top.is_relative_to(path.resolve()):
                    skipped += 1  # a link back up
                else:
                    stack.append(path)
            elif kind is None and is_image_path(path):
                found.append(path)
            else:  # another file type, or a FIFO, socket, device, broken or looping link
                skipped += 1
    return sorted(found), skipped


def _from_csv(path: Path) -> tuple[dict[str, list[Path]], int]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            fields = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FewtuneError(
            f"{path}: cannot read the CSV ({exc}); save it as UTF-8 text with a path,label header"
        ) from None
    if not rows or "path" not in fields or "label" not in fields:
        raise FewtuneError(
            f"{path}: expected a header row with 'path' and 'label' columns and at least one row"
        )
    by_class: dict[str, list[Path]] = {}
    for line, row in enumerate(rows, start=2):
        label, file = (row["label"] or "").strip(), (row["path"] or "").strip()
        if not label or not file:
            raise FewtuneError(f"{path}, line {line}: empty path or label; every row needs both")
        image = Path(file) if Path(file).is_absolute() else path.parent / file
        if kind := special_kind(image):
            raise FewtuneError(
                f"{path}, line {line}: {image} is {kind}, not an image; list one image file per row"
            )
        if not image.is_file():
            raise FewtuneError(
                f"{path}, line {line}: {image} does not exist; paths are relative to the CSV's folder"
            )
        by_class.setdefault(label, []).append(image)
    return by_class, 0


def collect_inputs(items: list[str | Path]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into image paths, in a stable order.

    Raises:
        FewtuneError: an item is none of these, e.g. a class label given where a path belongs.
    """
    return find_inputs(items)[0]


def find_inputs(items: list[str | Path]) -> tuple[list[Path], int]:
    """:func:`collect_inputs`, and how many entries found in folders or globs were left out as no image
    files (see :func:`walk_images`). A path named outright is kept whatever it is: reading it names the
    problem ("is a FIFO, not an image file"), or ``--skip-bad`` skips it.
    """
    paths: list[Path] = []
    skipped = 0
    for item in items:
        path = Path(item)
        kind = special_kind(path)
        if kind == "a folder":
            found, left_out = walk_images(path)
            if not found:
                raise FewtuneError(f"{path}: folder holds no images (.jpg, .png, .webp, .bmp, .gif, .tif)")
            paths.extend(found)
            skipped += left_out
        elif kind is not None or path.is_file():
            paths.append(path)
        elif globbed := sorted(glob.glob(str(item), recursive=True)):
            for match in map(Path, globbed):
                if special_kind(match) is None and is_image_path(match):
                    paths.append(match)
                else:
                    skipped += 1
        else:
            raise FewtuneError(
                f"{item!s}: not a file, folder or glob that matches images; predict takes image paths, not "
                "labels"
            )
    if not paths:
        note = f" ({skipped} entries matched, none an image file)" if skipped else ""
        raise FewtuneError(f"no images to predict{note}: pass image files, folders or glob patterns")
    return paths, skipped

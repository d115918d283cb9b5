"""What `Classifier.predict` accepts: paths, folders and globs, or pictures already in memory.

Python users hold images as PIL images, NumPy arrays (H x W x C uint8, or H x W greyscale) or
torch tensors (C x H x W, uint8 or float in [0, 1]); making them write files first would be a
detour and a disk round trip. Files are expanded here and embedded through the cached file path;
pictures in memory become RGB ``PIL.Image`` objects and go through the same preprocessing, uncached
(there is no file content to key the cache by).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

import numpy as np
from PIL import Image

from fewtune.data.dataset import collect_inputs
from fewtune.data.images import MAX_PIXELS, to_rgb
from fewtune.errors import FewtuneError

#: One thing to classify, or a list of them (any mix).
if TYPE_CHECKING:
    import torch

ImageInput: TypeAlias = "str | Path | Image.Image | np.ndarray | torch.Tensor"


@dataclass(frozen=True)
class Item:
    """One image to classify, in input order: a file (``path``) or a picture in memory (``picture``).

    Attributes:
        name: what ``Prediction.path`` reports: the file path, or ``<image N>`` (N = position in the
            caller's list) for a picture in memory.
    """

    name: str
    path: Path | None = None
    picture: Image.Image | None = None


def expand(inputs: ImageInput | Sequence[ImageInput]) -> list[Item]:
    """The images ``inputs`` stands for, in order: folders and globs expand to their files.

    Raises:
        FewtuneError: an input is of no supported kind, or a path matches no image.
    """
    single = isinstance(inputs, (str, Path, Image.Image, np.ndarray)) or (
        _is_tensor(inputs) and inputs.dim() <= 3
    )
    # a list, a tuple, a generator, or a 4-D tensor: a batch of C x H x W images
    entries = list(inputs) if not single and isinstance(inputs, Iterable) else [inputs]
    items: list[Item] = []
    run: list[
        str | Path
    ] = []  # consecutive paths expand together: a glob matching no image is fine among others
    for position, entry in enumerate([*entries, None]):
        if isinstance(entry, (str, Path)):
            run.append(entry)
            continue
        if run:
            items.extend(Item(name=str(p), path=p) for p in collect_inputs(run))
            run = []
        if isinstance(entry, Item):  # already expanded (e.g. by Classifier.predict)
            items.append(entry)
        elif position < len(entries):
            items.append(Item(name=f"<image {position}>", picture=to_picture(entry, position)))
    if not items:
        raise FewtuneError("no images to predict: pass image files, folders, glob patterns or pictures")
    return items


def to_picture(value: Any, position: int = 0) -> Image.Image:
    """An RGB ``PIL.Image`` from a PIL image, a NumPy array or a torch tensor (see the module doc)."""
    where = f"input {position}"
    if isinstance(value, Image.Image):
        picture = value
    elif _is_tensor(value):
        picture = _from_tensor(value, where)
    elif isinstance(value, np.ndarray):
        picture = _from_array(value, where)
    else:
        raise FewtuneError(
            f"{where}: a {type(value).__name__} is not an image; pass a path, a folder, a PIL image, "
            "a NumPy H x W x C uint8 array, a torch C x H x W tensor, or a list of these"
        )
    if picture.width * picture.height > MAX_PIXELS:
        raise FewtuneError(
            f"{where}: {picture.width}x{picture.height} pixels is too large; downscale it below "
            f"{MAX_PIXELS:,}"
        )
    if picture.width == 0 or picture.height == 0:
        raise FewtuneError(f"{where}: an empty image ({picture.width}x{picture.height})")
    picture.load()
    return to_rgb(picture)


def _from_array(array: np.ndarray, where: str) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise FewtuneError(
            f"{where}: a NumPy array of shape {array.shape}; expected H x W x 3 (RGB), H x W x 4 (RGBA) or "
            "H x W (grey)"
        )
    if array.dtype != np.uint8:
        raise FewtuneError(
            f"{where}: a NumPy array of {array.dtype}; expected uint8 0-255 "
            "(for floats in [0, 1]: (array * 255).round().astype(np.uint8))"
        )
    return Image.fromarray(np.ascontiguousarray(array))


def _is_tensor(value: Any) -> TypeGuard[torch.Tensor]:
    """Whether ``value`` is a torch tensor, without importing torch: none exists unless it was."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _from_tensor(tensor: torch.Tensor, where: str) -> Image.Image:
    """C x H x W (or H x W) tensor, uint8 0-255 or float 0-1 as torchvision's ``ToTensor`` makes."""
    import torch  # already imported: the caller holds a tensor

    tensor = tensor.detach().cpu()
    if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)
    elif tensor.dim() != 2:
        raise FewtuneError(
            f"{where}: a tensor of shape {tuple(tensor.shape)}; expected C x H x W with C = 1, 3 or 4"
        )
    if tensor.is_floating_point():
        if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
            raise FewtuneError(
                f"{where}: a float tensor outside [0, 1] (already normalised?); pass the picture before "
                "normalisation"
            )
        tensor = (tensor * 255).round().to(torch.uint8)
    elif tensor.dtype != torch.uint8:
        raise FewtuneError(f"{where}: a tensor of {tensor.dtype}; expected uint8 0-255 or float 0-1")
    return _from_array(tensor.numpy(), where)


def embed_items(
    backbone: Any, items: Sequence[Item], *, skip_bad: bool = False, progress: bool = False
) -> tuple[np.ndarray, list[Item]]:
    """(n_ok, dim) embeddings of ``items`` in their order, and the items they belong to.

    Files go through :func:`fewtune.features.embedding.embed_files` (cached; unreadable ones dropped under
    ``skip_bad``), pictures through :func:`fewtune.features.embedding.embed_images` (same preprocessing).
    """
    from fewtune.features.embedding import embed_files, embed_images

    files = [(i, item.path) for i, item in enumerate(items) if item.path is not None]
    pictures = [(i, item.picture) for i, item in enumerate(items) if item.picture is not None]
    rows: dict[int, np.ndarray] = {}
    if files:
        embedded = embed_files(backbone, [p for _, p in files], skip_bad=skip_bad, progress=progress)
        rows.update({files[k][0]: row for k, row in zip(embedded.kept, embedded.features, strict=True)})
    if pictures:
        embedded_pictures = embed_images(backbone, [p for _, p in pictures])
        rows.update(zip([i for i, _ in pictures], embedded_pictures, strict=True))
    order = sorted(rows)
    features = np.stack([rows[i] for i in order]) if order else np.empty((0, backbone.dim), dtype=np.float32)
    return features, [items[i] for i in order]

"""Decode any common image file into an 8-bit RGB picture, or say clearly why not."""

from __future__ import annotations

import errno
import io
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fewtune.errors import FewtuneError

#: Suffixes treated as images when walking a folder (compared lower-case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Pillow's default bomb guard (~179 Mpx) warns first and raises only past twice that; we raise
# at the limit itself, so one hostile file can't take gigabytes of memory.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 178_956_970


def is_image_path(path: Path) -> bool:
    """True for visible files whose suffix says image; hidden files (``.DS_Store``, ``._x.jpg``) are not."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def special_kind(path: str | Path) -> str | None:
    """What ``path`` is when it is there but is no regular file: "a folder", "a FIFO", "a socket",
    "a device", "a symlink loop" or "a broken link"; ``None`` for a regular file or nothing at all.

    Looks with ``stat`` only: opening a FIFO to find out would block until someone writes to it.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return "a broken link" if path.is_symlink() else None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def decode(data: bytes, source: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB ``PIL.Image``, upright per its EXIF orientation.

    Args:
        data: the file's bytes (read once by the caller, which also hashes them).
        source: the file name, used only in error messages.
        draft_size: if given, JPEGs much larger than this are decoded at a reduced scale (DCT
            scaling, several times faster); the result stays at least this large on each side.

    Raises:
        FewtuneError: the file is not an image, is truncated or corrupt, or is absurdly large.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.seek(0)  # first frame of a GIF / multi-page TIFF
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FewtuneError(
            f"{source}: image too large to decode safely ({exc}); downscale it below {MAX_PIXELS:,} pixels"
        ) from None
    except UnidentifiedImageError:
        raise FewtuneError(
            f"{source}: not a readable image (unknown or corrupt format); re-export it as JPEG or PNG, "
            "or pass --skip-bad to skip such files"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise FewtuneError(
            f"{source}: corrupt or truncated image ({exc}); re-export it, or pass --skip-bad to skip such files"
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: transparency goes on white, 16-bit is rescaled, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale: stretch the used range to 0..255 rather than clip to it
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = ((array - low) * scale).round().astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read(path: str | Path) -> bytes:
    """A file's bytes, or a one-line error naming it (a FIFO is refused, never opened: that would block)."""
    if kind := special_kind(path):
        raise FewtuneError(f"{path}: is {kind}, not an image file; pass image files, or pass --skip-bad to skip such entries")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FewtuneError(f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions") from None


def load(path: str | Path) -> Image.Image:
    """Read and decode one image file (see :func:`decode`)."""
    return decode(read(path), path)

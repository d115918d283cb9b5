"""Decode any common image file into an 8-bit RGB picture, or say clearly why not."""

from __future__ import annotations

import errno
import hashlib
import io
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fewtune.errors import FewtuneError

#: Suffixes treated as images when walking a folder (compared lower-case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# Pillow's default bomb guard (~179 Mpx) warns first and raises only past twice that; we raise
# at the limit itself, so one hostile file can't take gigabytes of memory.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 178_956_970

#: Most memory one decode may take: width x height x bytes per pixel of the decoded mode (after
#: JPEG's reduced-scale draft, so any JPEG under MAX_PIXELS fits). 192 MiB holds a 7000x7000 RGB(A)
#: or a 10000x10000 16-bit greyscale PNG; each picture is shrunk to about the backbone's input size
#: right after decoding, so a few decodes at once stay within a few hundred MB whatever the files.
MAX_DECODE_BYTES = 192 * 1024 * 1024

#: Files up to this size are read into memory once (hashed and decoded from the same bytes);
#: larger ones are hashed and decoded from the open file, so a 1 GiB file costs no gigabyte.
READ_WHOLE_BYTES = 64 * 1024 * 1024


class ImageTooLarge(FewtuneError):
    """The image is legal but would cost more memory to decode than allowed."""


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


def decode(
    data: bytes | BinaryIO,
    source: str | Path,
    draft_size: int | None = None,
    max_bytes: int = MAX_DECODE_BYTES,
) -> Image.Image:
    """Decode an image to an RGB ``PIL.Image``, upright per its EXIF orientation.

    Args:
        data: the file's bytes (read once by the caller, which also hashes them), or an open
            binary file (decoded without reading it whole).
        source: the file name, used only in error messages.
        draft_size: if given, JPEGs much larger than this are decoded at a reduced scale (DCT
            scaling, several times faster), and any larger picture is shrunk right after decoding
            (box filter, integer factor) before anything else copies it; the result stays at least
            this large on each side.
        max_bytes: refuse images whose decoded pixels would take more memory than this.

    Raises:
        ImageTooLarge: decoding would cost more than ``max_bytes`` (or more than MAX_PIXELS pixels).
        FewtuneError: the file is not an image, is truncated or corrupt.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(
                io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
            )
            if image.width * image.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            cost = decode_cost(image)
            if cost > max_bytes:
                raise ImageTooLarge(
                    f"{source}: decoding this {image.width}x{image.height} {image.mode} image would take "
                    f"{cost / 2**20:,.0f} MiB, more than the {max_bytes / 2**20:,.0f} MiB allowed; "
                    "downscale it"
                )
            image.seek(0)  # first frame of a GIF / multi-page TIFF
            image.load()
            if draft_size:
                image = shrink(image, draft_size)
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(
            f"{source}: image too large to decode safely ({exc}); downscale it below {MAX_PIXELS:,} pixels"
        ) from None
    except UnidentifiedImageError:
        raise FewtuneError(
            f"{source}: not a readable image (unknown or corrupt format); re-export it as JPEG or PNG, "
            "or pass --skip-bad to skip such files"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise FewtuneError(
            f"{source}: corrupt or truncated image ({exc}); re-export it, or pass --skip-bad to skip such "
            "files"
        ) from None


def probe_cost(data: bytes | BinaryIO, draft_size: int | None = None) -> int:
    """What :func:`decode` would allocate for these pixels, from the header alone (0 if unreadable:
    decode then says why). Lets a caller reserve memory before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            return decode_cost(image)
    except Exception:  # noqa: BLE001 - any failure here is reported by decode itself
        return 0
    finally:
        if not isinstance(data, (bytes, bytearray)):
            data.seek(0)


def decode_cost(image: Image.Image) -> int:
    """Bytes Pillow allocates for the decoded pixels: 1 per pixel for 1/L/P, 2 for 16-bit, else 4."""
    if image.mode in ("1", "L", "P"):
        per_pixel = 1
    elif image.mode.startswith("I;16"):
        per_pixel = 2
    else:  # RGB is stored padded to 4 bytes; RGBA, CMYK, LA, I, F take 4
        per_pixel = 4
    return image.width * image.height * per_pixel


def shrink(image: Image.Image, min_side: int) -> Image.Image:
    """Shrink by the largest integer factor that keeps both sides >= ``min_side`` (box filter)."""
    factor = min(image.width, image.height) // min_side
    if factor < 2:
        return image
    size = (max(1, image.width // factor), max(1, image.height // factor))
    return image.resize(size, Image.Resampling.BOX)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: transparency goes on white, 16-bit is rescaled, CMYK
    converted."""
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
    _refuse_special(path)
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FewtuneError(
            f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions"
        ) from None


def _refuse_special(path: str | Path) -> None:
    if kind := special_kind(path):
        raise FewtuneError(
            f"{path}: is {kind}, not an image file; pass image files, or pass --skip-bad to skip such entries"
        )


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (memory stays constant however large it is)."""
    _refuse_special(path)
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as exc:
        raise FewtuneError(
            f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions"
        ) from None


def load_hashed(path: str | Path, draft_size: int | None = None) -> tuple[str, Image.Image]:
    """(sha256 of the bytes decoded, picture). Small files are read once; huge ones are streamed."""
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise FewtuneError(
            f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions"
        ) from None
    if size <= READ_WHOLE_BYTES:
        data = read(path)
        return hashlib.sha256(data).hexdigest(), decode(data, path, draft_size=draft_size)
    digest = sha256_file(path)
    try:
        with open(path, "rb") as file:
            return digest, decode(file, path, draft_size=draft_size)
    except OSError as exc:
        raise FewtuneError(
            f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions"
        ) from None


def load(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Read and decode one image file (see :func:`decode`), without reading a huge file whole."""
    _refuse_special(path)
    try:
        with open(path, "rb") as file:
            return decode(file, path, draft_size=draft_size)
    except OSError as exc:
        raise FewtuneError(
            f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions"
        ) from None

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewtune.data import images
from fewtune.errors import FewtuneError


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_format_decodes_to_rgb(fmt):
    decoded = images.decode(encode(RGB, fmt), f"x.{fmt.lower()}")
    assert decoded.mode == "RGB" and decoded.size == (40, 30)


@pytest.mark.parametrize(
    "image",
    [
        RGB.convert("L"),
        RGB.convert("P"),
        RGB.convert("CMYK"),
        RGB.convert("RGBA"),
        RGB.convert("LA"),
    ],
    ids=["grey", "palette", "cmyk", "rgba", "grey+alpha"],
)
def test_every_mode_becomes_rgb(image):
    fmt = "JPEG" if image.mode == "CMYK" else "TIFF" if image.mode == "LA" else "PNG"
    assert images.decode(encode(image, fmt), "x").mode == "RGB"


def test_transparency_composites_on_white():
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert images.decode(encode(clear, "PNG"), "x").getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0] * 256)
    assert images.decode(encode(palette, "PNG", transparency=0), "x").getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_greyscale_uses_its_full_range():
    ramp = Image.fromarray(np.linspace(1000, 3000, 64, dtype=np.uint16).reshape(8, 8))
    decoded = np.asarray(images.decode(encode(ramp, "PNG"), "x"))
    assert decoded.min() == 0 and decoded.max() == 255


def test_gif_takes_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = images.decode(buffer.getvalue(), "x.gif").getpixel((0, 0))
    assert r > 200 and b < 50


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (40, 20))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    assert images.decode(encode(wide, "JPEG", exif=exif), "x").size == (20, 40)


def test_corrupt_image_names_the_file_and_the_fix():
    with pytest.raises(FewtuneError, match=r"^bad\.jpg: not a readable image .*--skip-bad"):
        images.decode(b"definitely not a jpeg", "bad.jpg")


def test_truncated_image_names_the_file_and_the_fix():
    data = encode(RGB.resize((200, 200)), "JPEG")
    with pytest.raises(FewtuneError, match=r"^cut\.jpg: corrupt or truncated image .*--skip-bad"):
        images.decode(data[: len(data) // 2], "cut.jpg")


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(FewtuneError, match="too large to decode safely"):
        images.decode(encode(RGB, "PNG"), "big.png")


def test_unreadable_file(tmp_path):
    with pytest.raises(FewtuneError, match="cannot read the file"):
        images.load(tmp_path / "missing.jpg")


def test_image_suffixes_and_hidden_files():
    assert images.is_image_path(Path("a/B.JPG"))
    assert not images.is_image_path(Path("a/._B.jpg"))
    assert not images.is_image_path(Path("a/notes.txt"))

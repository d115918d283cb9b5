"""Write a CIFAR-like copy of an image folder: every image centre-cropped and shrunk to 32x32 px.

Small, blurry photos (upscaled again by the backbone's preprocessing) are where ImageNet features
are weak but fine-tuning on a few examples does not pay: the case that keeps `auto` honest.

    python bench/lowres.py ../shared/data/caltech101 /tmp/caltech101-32px --per-class 25
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageOps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=None, help="keep the first N images of each class")
    args = parser.parse_args()
    written, taken = 0, {}
    for path in sorted(args.source.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        if args.per_class is not None:
            taken[path.parent] = taken.get(path.parent, 0) + 1
            if taken[path.parent] > args.per_class:
                continue
        try:
            image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        except OSError:
            continue
        out = (args.target / path.relative_to(args.source)).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.fit(image, (args.size, args.size), Image.Resampling.BICUBIC).save(out)
        written += 1
    print(f"{written} images written to {args.target}")


if __name__ == "__main__":
    main()

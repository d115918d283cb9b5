"""Leakage guard: the same picture on both sides of a train/test (support/query) split inflates
accuracy. Exact copies share a content hash; near-copies (resized, re-encoded) a perceptual hash
within a few bits."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fewtune.data import images
from fewtune.errors import FewtuneError

NEAR = 2  #: largest Hamming distance between perceptual hashes still called a duplicate


@dataclass(frozen=True)
class Fingerprints:
    """Per image: sha256 of the bytes and a 64-bit difference hash (dHash) of the picture."""

    sha256: list[str]
    dhash: np.ndarray  # (n,) uint64


def dhash(picture: Image.Image) -> int:
    """Krawetz's difference hash: sign of horizontal gradients on a 9x8 greyscale thumbnail."""
    grey = np.asarray(picture.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(np.packbits(bits).view(">u8")[0])


def fingerprint(paths: Sequence[Path]) -> Fingerprints:
    """Hash every file (unreadable files get a unique hash and never match)."""

    def one(path: Path) -> tuple[str, int]:
        try:
            digest, picture = images.load_hashed(path, draft_size=64)
            return digest, dhash(picture)
        except FewtuneError:
            return f"unreadable:{path}", -1

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, paths))
    values = np.array([h if h >= 0 else 0 for _, h in results], dtype=np.uint64)
    return Fingerprints([s for s, _ in results], values)


def duplicates(
    prints: Fingerprints, left: Sequence[int], right: Sequence[int], near: int = NEAR
) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, i from ``left`` and j from ``right``, that are the same or nearly the
    same picture."""
    if not len(left) or not len(right):
        return []
    a, b = prints.dhash[list(left)], prints.dhash[list(right)]
    xor = a[:, None] ^ b[None, :]
    distance = np.unpackbits(xor.view(np.uint8).reshape(*xor.shape, 8), axis=-1).sum(axis=-1)
    same = np.array([[prints.sha256[i] == prints.sha256[j] for j in right] for i in left]) | (
        distance <= near
    )
    return [(left[i], right[j]) for i, j in zip(*np.nonzero(same), strict=True)]

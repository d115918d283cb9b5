"""Small inline JPEG thumbnails for the HTML reports, so a mistake can be seen, not just named.

Reports must stay self-contained files (no links to the user's photos, which move) and small:
each thumbnail is a ~3-5 KB JPEG data URI, and callers show a bounded number of them.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from fewtune.data.images import load as load_image
from fewtune.errors import FewtuneError


def jpeg_data_uri(path: str | Path, size: int = 128, quality: int = 80) -> str | None:
    """``data:image/jpeg;base64,...`` of the image shrunk to fit ``size`` px, or None when it cannot
    be read any more (moved or changed since it was scored): the report then shows its name only."""
    try:
        image = load_image(path)
    except FewtuneError:
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()

"""The settings of one server, and the names and sizes it accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fewtune.app.server.origins import LOOPBACK_HOSTS
from fewtune.data.images import MAX_DECODE_BYTES
from fewtune.model.openset import OpenSet

LABEL = re.compile(r"^[\w][\w .+\-]{0,62}$")  # letters, digits, _ . + - and spaces; no path separators
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_FILES = 16


@dataclass
class ServerConfig:
    """Settings of one server.

    Attributes:
        model_path: where `POST /models/save` writes when no name is given (the model it loaded).
        models_dir: folder for named saves; names are validated, so nothing escapes it.
        token: bearer token required on write endpoints, if set.
        protect_predict: require the token on ``POST /predict`` too (it costs CPU and memory).
        max_image_bytes: uploads larger than this are refused with 413.
        max_request_bytes: request bodies larger than this are refused with 413, counted as they
            arrive (also without a Content-Length).
        max_files: images per request.
        max_decode_bytes: decoded pixels x bytes per pixel above this are refused with 413.
        max_decodes: threads decoding ordinary pictures (<= 32 MiB decoded), across all
            requests; larger ones decode one at a time in their own thread.
        allow_hosts: Host names the server answers to (DNS rebinding guard); "*" for any.
        allow_origins: other sites whose pages may send writes (e.g. "https://app.example"); "*" for any.
    """

    strategy: str = "prototype"
    model_path: Path | None = None
    models_dir: Path = Path("models")
    token: str | None = None
    protect_predict: bool = False
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_files: int = MAX_FILES
    max_decode_bytes: int = MAX_DECODE_BYTES
    max_decodes: int = 2
    allow_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_HOSTS))
    allow_origins: list[str] = field(default_factory=list)
    batch_window_s: float = 0.005
    open_set: OpenSet = field(default_factory=OpenSet)

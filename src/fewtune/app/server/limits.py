"""Hard caps on what requests may make the server hold: body bytes, and memory for decoding.

A Content-Length over the cap is refused before any byte is read; a body sent without one
(chunked) is counted while it streams in and refused the moment it passes the cap, so a client
can never make the server buffer or spool more than ``max_bytes`` per request. Decodes run in
:class:`DecodeLanes`, so their memory is bounded whatever the number of requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import HTTPException

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` inside the app; an HTTPException, so the app answers 413 itself."""

    def __init__(self, max_bytes: int):
        super().__init__(
            413, f"request body larger than {max_bytes:,} bytes: send fewer or smaller images per request"
        )


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``max_bytes``, with or without Content-Length."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await _reply(send, 413, BodyTooLarge(self.max_bytes).detail)
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # raised where the app does not turn it into a response itself
            if not started:
                await _reply(send, 413, exc.detail)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send: Send, status: int, detail: str) -> None:
    """A JSON error sent straight from middleware (``{"detail": ...}``, like FastAPI's own)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class DecodeLanes:
    """Where pictures are decoded: a few threads for ordinary ones, one for huge ones.

    Ordinary uploads (decoded cost up to ``large_above``; any JPEG, thanks to reduced-scale
    decoding) never queue behind a huge PNG, and huge ones decode one at a time, so decoders hold
    at most ``small_threads x large_above + max_decode_bytes`` however many uploads arrive. Few
    threads also means few malloc arenas keeping freed memory.
    """

    def __init__(self, small_threads: int = 2, large_above: int = 32 * 1024 * 1024):
        self.large_above = large_above
        self.small = ThreadPoolExecutor(small_threads, thread_name_prefix="fewtune-decode")
        self.large = ThreadPoolExecutor(1, thread_name_prefix="fewtune-decode-large")

    def lane(self, cost: int) -> ThreadPoolExecutor:
        return self.large if cost > self.large_above else self.small


_libc = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def release_free_memory() -> None:
    """Hand freed heap memory back to the OS after a huge decode.

    glibc keeps freed blocks in per-thread arenas; Pillow allocates big images in 16 MB blocks,
    below the mmap threshold, so without a trim every decode thread keeps its largest image's
    worth of RSS. No-op where malloc_trim does not exist (musl, macOS)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)

"""Pictures out of a request: multipart files or base64 JSON, checked against the size limits,
then decoded a few at a time (:class:`~fewtune.app.server.limits.DecodeLanes`), each capped by its
pixels x bytes per pixel and shrunk to about the backbone's input size at once."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import BinaryIO

from fastapi import HTTPException, Request
from PIL import Image
from starlette.requests import ClientDisconnect

from fewtune.app.server.config import ServerConfig
from fewtune.app.server.limits import DecodeLanes, release_free_memory
from fewtune.data.images import ImageTooLarge, decode, probe_cost
from fewtune.errors import FewtuneError

Upload = tuple[str, bytes | BinaryIO]  #: a name and the file's bytes, or the spooled file itself
DISCONNECTED = "the client disconnected before sending the whole body"


class Uploads:
    """Reads and decodes the images of requests to one server."""

    def __init__(self, config: ServerConfig, draft_size: int):
        self.config, self.draft_size = config, draft_size
        self.lanes = DecodeLanes(config.max_decodes)

    async def read(self, request: Request) -> list[Upload]:
        """Multipart ``file`` fields, or JSON ``{"images": [{"name": ..., "data": base64}]}``.

        Multipart files stay spooled on disk (starlette keeps 1 MB of each in memory) until their
        decode slot comes; the body as a whole was capped by :class:`BodyLimit` as it arrived.
        """
        config = self.config
        kind = request.headers.get("content-type", "")
        items: list[Upload] = []
        too_many = f"at most {config.max_files} images per request: send the rest in another request"
        if kind.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=config.max_files, max_fields=config.max_files + 16)
            except ClientDisconnect:  # the client left mid-body: nobody reads the answer
                raise HTTPException(400, DISCONNECTED) from None
            for upload in form.getlist("file"):
                if isinstance(upload, str):
                    raise HTTPException(422, "each 'file' field must be a file upload")
                if upload.size is not None and upload.size > config.max_image_bytes:
                    raise HTTPException(413, self._too_large(upload.filename))
                if not (upload.content_type or "").startswith("image/"):
                    raise HTTPException(
                        415, f"{upload.filename}: content type {upload.content_type!r} is not an image"
                    )
                items.append((upload.filename or "upload", upload.file))
        elif kind.startswith("application/json"):
            try:
                body = await request.json()
                if len(body["images"]) > config.max_files:
                    raise HTTPException(413, too_many)
                for entry in body["images"]:
                    items.append(
                        (str(entry.get("name", "upload")), base64.b64decode(entry["data"], validate=True))
                    )
            except ClientDisconnect:
                raise HTTPException(400, DISCONNECTED) from None
            except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
                raise HTTPException(
                    422, 'expected JSON {"images": [{"name": "a.jpg", "data": "<base64>"}]}'
                ) from None
        else:
            raise HTTPException(
                415, "send multipart/form-data with 'file' fields, or JSON with base64 images"
            )
        if not items:
            raise HTTPException(422, "no images in the request: add at least one 'file' field")
        for name, data in items:
            if isinstance(data, bytes) and len(data) > config.max_image_bytes:
                raise HTTPException(413, self._too_large(name))
        return items

    def _too_large(self, name: str | None) -> str:
        return f"{name}: larger than {self.config.max_image_bytes:,} bytes; send a smaller image"

    async def decode_all(self, items: list[Upload]) -> list[Image.Image]:
        """Decode one by one: a request's pictures wait their turn like everyone else's."""
        loop = asyncio.get_running_loop()
        pictures = []
        for name, data in items:
            cost = await loop.run_in_executor(
                self.lanes.small, probe_cost, data, self.draft_size
            )  # header only
            pictures.append(await loop.run_in_executor(self.lanes.lane(cost), self._decode, name, data, cost))
        return pictures

    def _decode(self, name: str, data: bytes | BinaryIO, cost: int) -> Image.Image:
        if not isinstance(data, bytes):
            data.seek(0)
        try:
            return decode(data, name, draft_size=self.draft_size, max_bytes=self.config.max_decode_bytes)
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except FewtuneError as exc:
            raise HTTPException(
                422, str(exc).replace(", or pass --skip-bad to skip such files", "")
            ) from None
        finally:
            if cost > self.lanes.large_above:
                release_free_memory()

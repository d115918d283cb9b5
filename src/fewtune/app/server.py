"""`fewtune serve`: an HTTP API and a one-page app to teach and test a classifier in the browser.

The examples the server has been taught (their embeddings, per label) are the source of truth;
every change builds a new :class:`Classifier` to the side and swaps it in under a lock, so a
request never sees a half-updated model. The backbone runs in worker threads, never on the event
loop, and concurrent predictions are batched into one forward pass.

What a client can cost is bounded: request bodies are capped as they stream in (limits.py), uploads
wait on disk (not in memory) until one of a few decode slots is free, each decode is capped by its
pixels x bytes per pixel and shrunk to about the backbone's input size at once (images.py), and
only this server's own page, at a Host name it answers to, may drive it (origins.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from fewtune.features.backbones import Backbone
from fewtune.model.classifier import Classifier
from fewtune.model.head import Embeddings, Head, check_class_names
from fewtune.model.openset import OpenSet
from fewtune.errors import FewtuneError
from fewtune.features.embedding import decode_size, embed_images
from fewtune.data.images import MAX_DECODE_BYTES, ImageTooLarge, decode, probe_cost
from fewtune.app.limits import BodyLimit, DecodeLanes, release_free_memory
from fewtune.app.origins import LOOPBACK_HOSTS, OriginGuard
from fewtune.strategies import create_strategy

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


class Teacher:
    """The taught examples and the classifier built from them (None until two classes exist)."""

    def __init__(self, backbone: Backbone, config: ServerConfig, classifier: Classifier | None = None):
        self.backbone, self.config = backbone, config
        self._lock = threading.Lock()
        self.examples: dict[str, torch.Tensor] = {}
        #: a fine-tuned classifier measures novelty on pretrained embeddings: kept beside the tuned ones
        self.pretrained = classifier.pretrained if classifier is not None else None
        self.pretrained_examples: dict[str, torch.Tensor] = {}
        self.classifier = classifier
        if classifier is not None:
            config.strategy = classifier.strategy.name
            config.open_set = replace(classifier.open_set)
            for index, label in enumerate(classifier.classes):
                mine = classifier.head.support.select(classifier.head.labels == index)
                self.examples[label] = mine.features
                if classifier.pretrained is not None:
                    self.pretrained_examples[label] = mine.novelty

    def counts(self) -> dict[str, int]:
        return {label: len(features) for label, features in self.examples.items()}

    def add(self, label: str, features: torch.Tensor, pretrained_features: torch.Tensor | None = None) -> None:
        with self._lock:
            previous = self.examples.get(label)
            self.examples[label] = features if previous is None else torch.cat([previous, features])
            if self.pretrained is not None and pretrained_features is not None:
                previous = self.pretrained_examples.get(label)
                self.pretrained_examples[label] = pretrained_features if previous is None else torch.cat([previous, pretrained_features])
            self._rebuild()

    def remove(self, label: str) -> None:
        with self._lock:
            if label not in self.examples:
                raise KeyError(label)
            del self.examples[label]
            self.pretrained_examples.pop(label, None)
            self._rebuild()

    def retrain(self, strategy: str | None = None) -> None:
        with self._lock:
            if strategy is not None:
                create_strategy(strategy)  # validate before switching
                self.config.strategy = strategy
            self._rebuild()

    def _rebuild(self) -> None:
        """Fit a new classifier on every example, then swap it in (one reference assignment)."""
        if len(self.examples) < 2:
            self.classifier = None
            return
        classes = list(self.examples)
        labels = torch.cat([torch.full((len(f),), i) for i, f in enumerate(self.examples.values())])
        features = torch.cat(list(self.examples.values()))
        novelty = torch.cat(list(self.pretrained_examples.values())) if self.pretrained is not None else features
        head = Head(
            strategy=create_strategy(self.config.strategy),
            classes=classes,
            support=Embeddings(features, novelty),
            labels=labels,
            open_set=replace(self.config.open_set),
        )
        head.fit()
        training = {"source": "fewtune serve", "images": len(labels), "per_class": self.counts()}
        self.classifier = Classifier(backbone=self.backbone, head=head, pretrained=self.pretrained, training=training)


class Batcher:
    """Collects pictures from concurrent requests for a few milliseconds, embeds them in one batch."""

    def __init__(self, backbone: Backbone, window_s: float, max_batch: int = 32):
        self.backbone, self.window_s, self.max_batch = backbone, window_s, max_batch
        self._pending: list[tuple[list[Image.Image], Future]] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._run, daemon=True, name="fewtune-batcher").start()

    def embed(self, pictures: list[Image.Image]) -> torch.Tensor:
        future: Future = Future()
        with self._cv:
            self._pending.append((pictures, future))
            self._cv.notify()
        return future.result()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending)
                self._cv.wait(timeout=self.window_s)  # let concurrent requests join this batch
                batch, size = [], 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_batch):
                    batch.append(self._pending.pop(0))
                    size += len(batch[-1][0])
            try:
                features = embed_images(self.backbone, [p for pictures, _ in batch for p in pictures])
            except Exception as exc:  # noqa: BLE001 - hand the failure to the waiting requests
                for _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for pictures, future in batch:
                future.set_result(features[start : start + len(pictures)])
                start += len(pictures)


def create_app(backbone: Backbone, classifier: Classifier | None = None, config: ServerConfig | None = None):
    """The ASGI app. ``classifier`` seeds it (e.g. a loaded model); without one it starts empty."""
    config = config or ServerConfig()
    backbone.model  # noqa: B018 - build the network now (it is lazy), not inside the first request
    if classifier is not None and classifier.pretrained is not None:
        classifier.pretrained.model  # noqa: B018

    def require_token(request: Request) -> None:
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")  # bytes: any header compares
        if config.token and not secrets.compare_digest(given, f"Bearer {config.token}".encode("utf-8", "surrogateescape")):
            raise HTTPException(401, "this endpoint needs the header 'Authorization: Bearer <token>' given to `fewtune serve --token`")

    teacher = Teacher(backbone, config, classifier)
    batcher = Batcher(backbone, config.batch_window_s)
    app = FastAPI(
        title="fewtune", version=_version(), description="Teach and test a few-shot image classifier.", docs_url=None, redoc_url=None
    )
    app.state.teacher = teacher
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    app.add_middleware(OriginGuard, allow_hosts=config.allow_hosts, allow_origins=config.allow_origins)  # outermost
    lanes = DecodeLanes(config.max_decodes)
    draft_size = decode_size(backbone.preprocessing)
    guard_predict = [Depends(require_token)] if config.protect_predict else []

    def valid_label(label: str) -> str:
        label = label.strip()
        if not LABEL.fullmatch(label) or ".." in label:
            raise HTTPException(422, f"invalid label {label!r}: use 1-63 letters, digits, spaces, '_', '.', '+' or '-'")
        try:
            check_class_names([label], config.open_set.unknown_label)
        except FewtuneError as exc:
            raise HTTPException(422, str(exc)) from None
        return label

    async def read_images(request: Request) -> list[tuple[str, bytes | BinaryIO]]:
        """Multipart ``file`` fields, or JSON ``{"images": [{"name": ..., "data": base64}]}``.

        Multipart files stay spooled on disk (starlette keeps 1 MB of each in memory) until their
        decode slot comes; the body as a whole was capped by :class:`BodyLimit` as it arrived.
        """
        kind = request.headers.get("content-type", "")
        items: list[tuple[str, bytes | BinaryIO]] = []
        too_many = f"at most {config.max_files} images per request: send the rest in another request"
        if kind.startswith("multipart/form-data"):
            try:
                form = await request.form(max_files=config.max_files, max_fields=config.max_files + 16)
            except ClientDisconnect:  # the client left mid-body: nobody reads the answer
                raise HTTPException(400, "the client disconnected before sending the whole body") from None
            for upload in form.getlist("file"):
                if isinstance(upload, str):
                    raise HTTPException(422, "each 'file' field must be a file upload")
                if upload.size is not None and upload.size > config.max_image_bytes:
                    raise HTTPException(413, f"{upload.filename}: larger than {config.max_image_bytes:,} bytes; send a smaller image")
                if not (upload.content_type or "").startswith("image/"):
                    raise HTTPException(415, f"{upload.filename}: content type {upload.content_type!r} is not an image")
                items.append((upload.filename or "upload", upload.file))
        elif kind.startswith("application/json"):
            try:
                body = await request.json()
                if len(body["images"]) > config.max_files:
                    raise HTTPException(413, too_many)
                for entry in body["images"]:
                    items.append((str(entry.get("name", "upload")), base64.b64decode(entry["data"], validate=True)))
            except ClientDisconnect:
                raise HTTPException(400, "the client disconnected before sending the whole body") from None
            except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
                raise HTTPException(422, 'expected JSON {"images": [{"name": "a.jpg", "data": "<base64>"}]}') from None
        else:
            raise HTTPException(415, "send multipart/form-data with 'file' fields, or JSON with base64 images")
        if not items:
            raise HTTPException(422, "no images in the request: add at least one 'file' field")
        for name, data in items:
            if isinstance(data, bytes) and len(data) > config.max_image_bytes:
                raise HTTPException(413, f"{name}: larger than {config.max_image_bytes:,} bytes; send a smaller image")
        return items

    def decode_one(name: str, data: bytes | BinaryIO, cost: int) -> Image.Image:
        if not isinstance(data, bytes):
            data.seek(0)
        try:
            return decode(data, name, draft_size=draft_size, max_bytes=config.max_decode_bytes)
        except ImageTooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except FewtuneError as exc:
            raise HTTPException(422, str(exc).replace(", or pass --skip-bad to skip such files", "")) from None
        finally:
            if cost > lanes.large_above:
                release_free_memory()

    async def decode_all(items: list[tuple[str, bytes | BinaryIO]]) -> list[Image.Image]:
        """Decode one by one: a request's pictures wait their turn like everyone else's."""
        loop = asyncio.get_running_loop()
        pictures = []
        for name, data in items:
            cost = await loop.run_in_executor(lanes.small, probe_cost, data, draft_size)  # header only
            pictures.append(await loop.run_in_executor(lanes.lane(cost), decode_one, name, data, cost))
        return pictures

    @app.exception_handler(FewtuneError)
    async def _bad_input(request: Request, exc: FewtuneError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (resources.files("fewtune.app") / "static" / "index.html").read_text(encoding="utf-8")

    _add_docs(app)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/classes")
    def classes() -> list[dict[str, Any]]:
        return [{"label": label, "examples": n} for label, n in teacher.counts().items()]

    @app.get("/model")
    def model() -> dict[str, Any]:
        current = teacher.classifier
        if current is None:
            return {"ready": False, "strategy": config.strategy, "classes": list(teacher.counts()), "detail": "teach at least two classes"}
        return {"ready": True, **current.config()}

    @app.post("/predict", dependencies=guard_predict)
    async def predict(request: Request, top_k: int = 3, open_set: bool | None = None) -> list[dict[str, Any]]:
        items = await read_images(request)
        current = teacher.classifier  # one reference: later swaps don't affect this request
        if current is None:
            raise HTTPException(409, "teach at least two classes before predicting (POST /classes/{label}/examples)")
        pictures = await decode_all(items)
        features = await run_in_threadpool(batcher.embed, pictures)
        pretrained = await run_in_threadpool(embed_images, current.pretrained, pictures) if current.pretrained is not None else None
        batch = Embeddings(features, features if pretrained is None else pretrained)
        predictions = current.head.predict(batch, [name for name, _ in items], top_k, open_set=open_set)
        return [p.to_dict() for p in predictions]

    @app.post("/classes/{label}/examples", dependencies=[Depends(require_token)])
    async def add_examples(label: str, request: Request) -> dict[str, Any]:
        label = valid_label(label)
        items = await read_images(request)
        pictures = await decode_all(items)
        features = await run_in_threadpool(batcher.embed, pictures)
        pretrained = await run_in_threadpool(embed_images, teacher.pretrained, pictures) if teacher.pretrained is not None else None
        await run_in_threadpool(teacher.add, label, features, pretrained)
        return {"label": label, "added": len(items), "examples": teacher.counts()[label], "ready": teacher.classifier is not None}

    @app.delete("/classes/{label}", dependencies=[Depends(require_token)])
    async def delete_class(label: str) -> dict[str, Any]:
        try:
            await run_in_threadpool(teacher.remove, label)
        except KeyError:
            raise HTTPException(404, f"no class {label!r}; GET /classes lists them") from None
        return {"removed": label, "classes": list(teacher.counts())}

    @app.post("/train", dependencies=[Depends(require_token)])
    async def train(strategy: str | None = None) -> dict[str, Any]:
        await run_in_threadpool(teacher.retrain, strategy)
        current = teacher.classifier
        return {"strategy": config.strategy, "ready": current is not None, "fit": current.fit_report if current else {}}

    @app.post("/models/save", dependencies=[Depends(require_token)])
    async def save(name: str | None = None) -> dict[str, str]:
        current = teacher.classifier
        if current is None:
            raise HTTPException(409, "nothing to save yet: teach at least two classes")
        if name is None:
            if config.model_path is None:
                raise HTTPException(422, "give ?name=NAME (the server was started without a model path)")
            target = config.model_path
        else:
            if not LABEL.fullmatch(name) or ".." in name or " " in name:
                raise HTTPException(422, f"invalid model name {name!r}: letters, digits, '_', '.', '+' or '-' only")
            target = config.models_dir / f"{name.removesuffix('.fewtune')}.fewtune"
        await run_in_threadpool(current.save, target)
        return {"saved": str(target)}

    return app


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the locally installed swagger-ui-bundle (no CDN: fewtune works
    offline, and a page loading third-party scripts could drive the API); without that package
    /docs points at /openapi.json."""
    try:
        import swagger_ui_bundle
    except ImportError:

        @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
        def no_docs() -> str:
            return (
                "<!doctype html><title>fewtune API</title><p>The API schema is at <a href='/openapi.json'>/openapi.json</a>. "
                "For interactive docs here: <code>pip install swagger-ui-bundle</code>.</p>"
            )

        return
    app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="fewtune API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # else the page fetches a badge from swagger.io
        )


def _version() -> str:
    from fewtune._version import __version__

    return __version__

"""The ASGI app: the routes of the HTTP API and the page, over one :class:`Teacher`."""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from fewtune._version import __version__
from fewtune.app.server.batcher import Batcher
from fewtune.app.server.config import LABEL, ServerConfig
from fewtune.app.server.docs import add_docs
from fewtune.app.server.limits import BodyLimit
from fewtune.app.server.origins import OriginGuard
from fewtune.app.server.teacher import Teacher
from fewtune.app.server.uploads import Uploads
from fewtune.errors import FewtuneError
from fewtune.features.backbones import Backbone
from fewtune.features.embedding import decode_size, embed_images
from fewtune.model.classifier import Classifier
from fewtune.model.head import Embeddings, check_class_names

NEEDS_TOKEN = (
    "this endpoint needs the header 'Authorization: Bearer <token>' given to `fewtune serve --token`"
)


def create_app(
    backbone: Backbone, classifier: Classifier | None = None, config: ServerConfig | None = None
) -> FastAPI:
    """The ASGI app. ``classifier`` seeds it (e.g. a loaded model); without one it starts empty."""
    config = config or ServerConfig()
    backbone.warm_up()  # build and fold the network now (it is lazy), not inside the first requests
    if classifier is not None and classifier.pretrained is not None:
        classifier.pretrained.warm_up()

    def require_token(request: Request) -> None:
        # bytes: any header compares
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        expected = f"Bearer {config.token}".encode("utf-8", "surrogateescape")
        if config.token and not secrets.compare_digest(given, expected):
            raise HTTPException(401, NEEDS_TOKEN)

    teacher = Teacher(backbone, config, classifier)
    batcher = Batcher(backbone, config.batch_window_s)
    app = FastAPI(
        title="fewtune",
        version=__version__,
        description="Teach and test a few-shot image classifier.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.teacher = teacher
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)
    app.add_middleware(
        OriginGuard, allow_hosts=config.allow_hosts, allow_origins=config.allow_origins
    )  # outermost
    uploads = Uploads(config, decode_size(backbone.preprocessing))
    guard_predict = [Depends(require_token)] if config.protect_predict else []

    def valid_label(label: str) -> str:
        label = label.strip()
        if not LABEL.fullmatch(label) or ".." in label:
            raise HTTPException(
                422, f"invalid label {label!r}: use 1-63 letters, digits, spaces, '_', '.', '+' or '-'"
            )
        try:
            check_class_names([label], config.open_set.unknown_label)
        except FewtuneError as exc:
            raise HTTPException(422, str(exc)) from None
        return label

    @app.exception_handler(FewtuneError)
    async def _bad_input(request: Request, exc: FewtuneError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (resources.files("fewtune.app") / "static" / "index.html").read_text(encoding="utf-8")

    add_docs(app)

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
            return {
                "ready": False, "strategy": config.strategy, "classes": list(teacher.counts()),
                "detail": "teach at least two classes",
            }  # fmt: skip
        return {"ready": True, **current.config()}

    @app.post("/predict", dependencies=guard_predict)
    async def predict(request: Request, top_k: int = 3, open_set: bool | None = None) -> list[dict[str, Any]]:
        items = await uploads.read(request)
        current = teacher.classifier  # one reference: later swaps don't affect this request
        if current is None:
            raise HTTPException(
                409, "teach at least two classes before predicting (POST /classes/{label}/examples)"
            )
        pictures = await uploads.decode_all(items)
        features = await run_in_threadpool(batcher.embed, pictures)
        pretrained = None
        if current.pretrained is not None:
            pretrained = await run_in_threadpool(embed_images, current.pretrained, pictures)
        batch = Embeddings(features, features if pretrained is None else pretrained)
        predictions = current.head.predict(batch, [name for name, _ in items], top_k, open_set=open_set)
        return [p.to_dict() for p in predictions]

    @app.post("/classes/{label}/examples", dependencies=[Depends(require_token)])
    async def add_examples(label: str, request: Request) -> dict[str, Any]:
        label = valid_label(label)
        items = await uploads.read(request)
        pictures = await uploads.decode_all(items)
        features = await run_in_threadpool(batcher.embed, pictures)
        pretrained = None
        if teacher.pretrained is not None:
            pretrained = await run_in_threadpool(embed_images, teacher.pretrained, pictures)
        await run_in_threadpool(teacher.add, label, features, pretrained)
        return {
            "label": label, "added": len(items), "examples": teacher.counts()[label],
            "ready": teacher.classifier is not None,
        }  # fmt: skip

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
        return {
            "strategy": config.strategy,
            "ready": current is not None,
            "fit": current.fit_report if current else {},
        }

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
                raise HTTPException(
                    422, f"invalid model name {name!r}: letters, digits, '_', '.', '+' or '-' only"
                )
            target = config.models_dir / f"{name.removesuffix('.fewtune')}.fewtune"
        await run_in_threadpool(current.save, target)
        return {"saved": str(target)}

    return app

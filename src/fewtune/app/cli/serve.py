"""`fewtune serve`: check the flags, load the model, then hand over to uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fewtune.app.cli.text import err
from fewtune.errors import FewtuneError


def serve(
    model: Annotated[
        Path | None, typer.Argument(help="A saved classifier to start from [default: start empty].")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; the default is this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    strategy: Annotated[
        str, typer.Option(help="Strategy for a classifier taught from scratch.")
    ] = "prototype",
    models_dir: Annotated[
        Path, typer.Option(help="Where POST /models/save?name=NAME writes NAME.fewtune.")
    ] = Path("models"),
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FEWTUNE_TOKEN", help="Require 'Authorization: Bearer TOKEN' on write endpoints."
        ),
    ] = None,
    max_image_mb: Annotated[float, typer.Option(help="Largest accepted upload per image, in MB.")] = 10.0,
    max_request_mb: Annotated[
        float, typer.Option(help="Largest request body, in MB (also for bodies without Content-Length).")
    ] = 32.0,
    protect_predict: Annotated[bool, typer.Option(help="Require the --token on POST /predict too.")] = False,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<name>",
            help="Also answer to this Host name (repeatable; '*' for any). "
            "Default: loopback names and --host.",
        ),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            metavar="<origin>",
            help="Also accept writes from pages of this origin, e.g. https://app.example "
            "(repeatable; '*' for any).",
        ),
    ] = None,
) -> None:
    """Serve an HTTP API (OpenAPI docs at /docs) and a web page at / where you teach and test a
    classifier: add classes from one photo each, drop test photos, save the model.

    Only pages served by this server may send it writes, and only at a Host name it answers to
    (loopback names and --host); list others with --allow-host / --allow-origin."""
    try:
        import uvicorn

        from fewtune.app.server import ServerConfig, create_app
        from fewtune.app.server.origins import default_hosts
    except ImportError:
        raise FewtuneError("the server needs its extra: pip install 'fewtune[serve]'") from None
    from fewtune.features.backbones import create_backbone
    from fewtune.model.classifier import load
    from fewtune.strategies import create_strategy

    create_strategy(strategy)
    if protect_predict and not token:
        raise FewtuneError("--protect-predict needs a token: add --token TOKEN (or set FEWTUNE_TOKEN)")
    if max_image_mb <= 0 or max_request_mb < max_image_mb:
        raise FewtuneError("--max-request-mb must be at least --max-image-mb, and both above 0")
    classifier = load(model) if model else None
    backbone = classifier.backbone if classifier else create_backbone()
    config = ServerConfig(
        strategy=strategy,
        model_path=model,
        models_dir=models_dir,
        token=token,
        protect_predict=protect_predict,
        max_image_bytes=int(max_image_mb * 1024 * 1024),
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        allow_hosts=default_hosts(host) + list(allow_host or []),
        allow_origins=list(allow_origin or []),
    )
    err.print(f"fewtune serving on http://{host}:{port}/  (API docs: /docs)", highlight=False)
    if host in ("0.0.0.0", "::") and not allow_host:
        err.print(
            "note: it answers only to Host names "
            + ", ".join(config.allow_hosts)
            + "; to reach it by another "
            "name or address (DNS rebinding guard), add --allow-host NAME",
            highlight=False,
            markup=False,
        )
    uvicorn.run(create_app(backbone, classifier, config), host=host, port=port, log_level="warning")

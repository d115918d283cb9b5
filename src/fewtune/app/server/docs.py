"""Swagger UI at /docs from the locally installed swagger-ui-bundle (no CDN: fewtune works offline,
and a page loading third-party scripts could drive the API)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

NO_DOCS = (
    "<!doctype html><title>fewtune API</title>"
    "<p>The API schema is at <a href='/openapi.json'>/openapi.json</a>. "
    "For interactive docs here: <code>pip install swagger-ui-bundle</code>.</p>"
)


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs; without swagger-ui-bundle, /docs points at /openapi.json."""
    try:
        import swagger_ui_bundle
    except ImportError:

        @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
        def no_docs() -> str:
            return NO_DOCS

        return
    app.mount(
        "/docs/assets", StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-assets"
    )

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

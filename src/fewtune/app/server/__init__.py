"""`fewtune serve`: an HTTP API and a one-page app to teach and test a classifier in the browser.

The examples the server has been taught (their embeddings, per label) are the source of truth;
every change builds a new :class:`Classifier` to the side and swaps it in under a lock, so a
request never sees a half-updated model (teacher.py). The backbone runs in worker threads, never on
the event loop, and concurrent predictions are batched into one forward pass (batcher.py).

What a client can cost is bounded: request bodies are capped as they stream in (limits.py), uploads
wait on disk (not in memory) until one of a few decode slots is free, each decode is capped by its
pixels x bytes per pixel and shrunk to about the backbone's input size at once (uploads.py), and
only this server's own page, at a Host name it answers to, may drive it (origins.py). The routes
are in routes.py, the settings in config.py, the page in ``fewtune/app/static/index.html``.
"""

from fewtune.app.server.config import ServerConfig
from fewtune.app.server.routes import create_app

__all__ = ["ServerConfig", "create_app"]

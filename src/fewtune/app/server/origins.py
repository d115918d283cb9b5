"""Who may talk to the server: Host and Origin checks against web pages driving it from a browser.

Two attacks need no network access beyond the victim's browser:

* cross-site requests: any page can ``fetch("http://127.0.0.1:8000/classes/x/examples", {method:
  "POST", ...})``; the browser sends it (only the response is hidden), so a write succeeds. Browsers
  always send ``Origin`` on such requests, so writes whose Origin is not this server's own are
  refused (403).
* DNS rebinding: a page at ``attacker.example`` re-points that name to 127.0.0.1 and then reads and
  writes with ``Host: attacker.example`` as "same origin". Requests for a Host name the server does
  not answer to are refused (400).

Deployments behind a real name or serving another site's page list them with ``--allow-host`` /
``--allow-origin`` ("*" allows any).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from fewtune.app.server.limits import ASGIApp, Receive, Scope, Send, _reply

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def default_hosts(bind: str) -> list[str]:
    """Loopback names, plus the interface the server listens on unless it is a wildcard."""
    hosts = list(LOOPBACK_HOSTS)
    if bind not in ("0.0.0.0", "::", "") and bind not in hosts:
        hosts.append(bind.strip("[]"))
    return hosts


def host_name(host: str) -> str:
    """The name part of a Host header or netloc, lower-case, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") > 1:  # a bare IPv6 address, as given to --allow-host
        return host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


class OriginGuard:
    """ASGI middleware: 400 for an unknown Host, 403 for a cross-origin write."""

    def __init__(
        self, app: ASGIApp, allow_hosts: Iterable[str] = LOOPBACK_HOSTS, allow_origins: Iterable[str] = ()
    ):
        self.app = app
        self.hosts = {host_name(h) for h in allow_hosts}
        self.origins = {o.strip().rstrip("/").lower() for o in allow_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])
        }
        host = headers.get("host")
        if host is not None and "*" not in self.hosts and host_name(host) not in self.hosts:
            known = ", ".join(sorted(self.hosts))
            return await _reply(
                send, 400,
                f"unknown Host header {host!r}: this server answers to {known}; if that name is really "
                f"this server's, start it with --allow-host {host_name(host) or 'NAME'}",
            )  # fmt: skip
        if scope["method"] not in SAFE_METHODS and not self._same_or_allowed(headers, host):
            origin = headers.get("origin", "(no Origin, Sec-Fetch-Site: cross-site)")
            return await _reply(
                send, 403,
                f"cross-origin request from {origin!r} refused: only the page this server serves may "
                "change it or send it images; to allow another site, start it with --allow-origin ORIGIN",
            )  # fmt: skip
        await self.app(scope, receive, send)

    def _same_or_allowed(self, headers: dict[str, str], host: str | None) -> bool:
        origin = headers.get("origin")
        if origin is None:  # not from a browser page (curl, scripts), or a same-origin navigation
            return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
        origin = origin.strip().rstrip("/").lower()
        if "*" in self.origins or origin in self.origins:
            return True
        if origin == "null" or host is None:  # sandboxed frames, file:// pages
            return False
        return urlsplit(origin).netloc == host.strip().lower()

"""The outermost defences of the web application: security headers on every response, the
origin check of state-changing requests, and the session signing key.

:class:`Guard` wraps every other middleware (see :func:`dicom_ai.web.app.create_app`), so its
headers are also on Starlette's own 500 pages, and a foreign request is refused before any
route runs or any body is parsed.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 9.2.1
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def session_secret(data_dir: Path) -> str:
    """The session signing key, made once per data_dir (file ``web-secret``, mode 0600)."""
    path = Path(data_dir) / "web-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def same(a: str, b: str) -> bool:
    """Whether two tokens are equal and not empty, compared in constant time."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def foreign_origin(scope: Scope, trusted: tuple[str, ...] = ()) -> str | None:
    """Why a request comes from another origin, or None when it does not say so.

    Refused: ``Sec-Fetch-Site`` ``cross-site`` or ``same-site`` (Fetch Metadata Request Headers;
    "same-site" covers another port of this host), and an ``Origin`` (RFC 6454; when absent, the
    origin of ``Referer``) other than ``scheme://Host`` of the request or one of ``trusted``.
    ``Origin: null`` (sandboxed or privacy-redirected) is foreign. Clients that send none of
    these headers (curl, scripts) pass.
    """
    headers = Headers(scope=scope)
    site = headers.get("sec-fetch-site", "").lower()
    if site in ("cross-site", "same-site"):
        return f"cross-origin request refused (Sec-Fetch-Site: {site})"
    origin = headers.get("origin")
    if origin is None and headers.get("referer"):
        parts = urlsplit(headers["referer"])
        origin = f"{parts.scheme}://{parts.netloc}"
    own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
    if origin is not None and origin.strip().lower() not in (own, *trusted):
        return "cross-origin request refused (Origin)"
    return None


class Guard:
    """The outermost ASGI layer: :data:`SECURITY_HEADERS` and ``Cache-Control`` on every
    response (also the 500s of Starlette's error middleware), and 403 for a state-changing
    request that :func:`foreign_origin` finds foreign, before any route or body parsing."""

    def __init__(self, app: ASGIApp, trusted_origins: tuple[str, ...] = ()) -> None:
        self.app, self.trusted = app, trusted_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers[key] = value
                headers["Cache-Control"] = "no-cache" if static else "no-store"
            await send(message)

        if scope["method"] not in SAFE_METHODS:
            reason = foreign_origin(scope, self.trusted)
            if reason:
                await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)

"""What the routes of :mod:`dicom_ai.web.routes` share: the node's :class:`WebContext`, the
page templates, and the dependencies that say who is asking.

:func:`reader` lets any logged-in user through (a session cookie from ``/login``, or HTTP Basic,
RFC 7617), :func:`admin` only the admin role. Not logged in, a page answers 303 to ``/login``
(:class:`LoginRequired`) and the API 401; a state-changing request authenticated by the session
cookie also needs the session's CSRF token in the ``X-CSRF-Token`` header (403 without).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.store import FileStore
from dicom_ai.config import Settings
from dicom_ai.export.review import REVIEWER_ROLES
from dicom_ai.web.auth import Authenticator, Busy, Identity, Throttled
from dicom_ai.web.security import SAFE_METHODS, same
from dicom_ai.web.viewer import MaskCache

HERE = Path(__file__).parent
MAX_ID = 2**63 - 1  # the index's integer keys are signed 64-bit
Limit = Annotated[int, Query(ge=1, le=10000, description="at most this many rows (1 to 10000)")]


def _csrf_context(request: Request) -> dict[str, Any]:
    return {"csrf": request.session.get("csrf", "")}


TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"), context_processors=[_csrf_context])


class LoginRequired(Exception):
    """A page asked for by someone not logged in: redirect to /login."""


@dataclass
class WebContext:
    """One node's web state, made by :func:`dicom_ai.web.app.create_app` and kept in
    ``app.state.web``: what the routes read (settings, index, file store), the login checks, the
    metrics registry, the viewer's mask cache, and the admin page's destination checks
    (``checks``: name -> outcome, written under ``lock``)."""

    settings: Settings
    sessions: sessionmaker
    store: FileStore
    authn: Authenticator
    metrics: CollectorRegistry
    masks: MaskCache
    lifetime: float  # seconds a session lasts from login
    checks: dict[str, dict[str, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # executor "celery": whether the broker answers now (None: no broker in this mode)
    broker_up: Callable[[], bool] | None = None


def context(request: Request) -> WebContext:
    """The :class:`WebContext` of the application serving ``request``."""
    return request.app.state.web


def address(request: Request) -> str:
    """The client's IP address ("" when unknown), as login throttling counts it."""
    return request.client.host if request.client else ""


def identify(request: Request) -> Identity | None:
    """The session's user as the index says now, else the HTTP Basic user (RFC 7617).

    A session lasts ``[web] session_hours`` from login; a revoked or expired one is cleared.

    Raises
    ------
    HTTPException
        429 while Basic logins of the name or from the address are throttled, 503 when the
        password checks are busy (both with Retry-After).
    """
    ctx = context(request)
    session = request.session
    if "uid" in session:
        who = ctx.authn.current(session.get("uid"), session.get("sv"), session.get("name", ""))
        at = session.get("at")
        if who is not None and isinstance(at, (int, float)) and 0 <= time.time() - at < ctx.lifetime:
            request.state.via = "session"
            return who
        session.clear()  # revoked or expired: this cookie opens nothing any more
    header = request.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        try:
            name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except ValueError:
            return None
        try:
            who = ctx.authn.basic(name, password, address(request))
        except Throttled as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        except Busy as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        if who is not None:
            request.state.via = "basic"
            return who
    return None


def check_csrf(request: Request, given: str) -> None:
    """Nothing when ``given`` is this session's CSRF token, else 403."""
    if not same(str(request.session.get("csrf", "")), given or ""):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page")


def reader(request: Request) -> Identity:
    """Any logged-in user; raises :class:`LoginRequired` for a page, 401 for ``/api/``, and 403
    for a state-changing session request without the CSRF token."""
    who = identify(request)
    if who is None:
        if request.url.path.startswith("/api/"):
            raise HTTPException(401, "log in first", headers={"WWW-Authenticate": 'Basic realm="dicom-ai"'})
        raise LoginRequired()
    if request.method not in SAFE_METHODS and request.state.via == "session":
        check_csrf(request, request.headers.get("x-csrf-token", ""))
    return who


def admin(who: Identity = Depends(reader)) -> Identity:
    """A logged-in user with the admin role, else as :func:`reader`, or 403."""
    if who.role != "admin":
        raise HTTPException(403, "admin role needed")
    return who


def reviewer(who: Identity = Depends(reader)) -> Identity:
    """A logged-in user with the reviewer or admin role, else as :func:`reader`, or 403."""
    if who.role not in REVIEWER_ROLES:
        raise HTTPException(403, "reviewer or admin role needed")
    return who


def row_id(value: int, what: str) -> int:
    """``value`` when it can be a key of the index, else 404 ``no such <what>``."""
    if not 0 < value <= MAX_ID:
        raise HTTPException(404, f"no such {what}")
    return value

"""The FastAPI application: worklist, study and admin pages, REST API, /metrics, /health.

:func:`create_app` composes it: the middleware, ``/static``, the node's
:class:`~dicom_ai.web.deps.WebContext`, and the routers of :mod:`dicom_ai.web.routes`.

Every page and API route needs a logged-in user (a session cookie from ``/login``, or HTTP
Basic on the API); actions (re-run, resend, destination check) need the admin role. Only
``/metrics``, ``/health`` and ``/static`` are open. The OpenAPI schema is at ``/openapi.json``
(logged in).

Protections (each rule is enforced in the module named, and tested in
``tests/web/test_security.py``):

- Cross-site request forgery (OWASP CSRF Prevention Cheat Sheet): every state-changing request
  (POST, PUT, PATCH, DELETE), ``/login`` and ``/logout`` included, is refused with 403 when the
  browser says it comes from elsewhere: ``Sec-Fetch-Site`` (Fetch Metadata) ``cross-site`` or
  ``same-site`` (SameSite cookies ignore the port, so another port of this host is "same
  site"), or an ``Origin`` (or, without one, ``Referer``) other than this request's own origin
  or a ``[web] trusted_origins`` entry. A request authenticated by the session cookie must also
  carry the session's token (synchronizer token pattern), in the ``csrf_token`` form field or
  the ``X-CSRF-Token`` header. HTTP Basic clients need no token: a browser that remembered Basic
  credentials is still stopped by the origin check. (:mod:`dicom_ai.web.security`,
  :mod:`dicom_ai.web.deps`)
- Sessions (RFC 6265 cookie, signed, HttpOnly, SameSite=Strict, ``Secure`` and ``__Host-``
  with ``[web] secure_cookies``) carry the user's id, name and ``session_version`` and no role:
  each request re-reads role and version from the index, so logout (which raises the version,
  ending all the user's sessions), a new role or password end them at once. Login starts a new
  session with a new CSRF token (no session fixation), valid ``session_hours`` from login.
  (:mod:`dicom_ai.web.deps`, :mod:`dicom_ai.web.routes.login`)
- Logins (form and Basic) are throttled per name and per address, fail in the same time for
  unknown names, and run scrypt in a bounded pool (:mod:`dicom_ai.web.auth`): 429 or 503 with
  ``Retry-After``.
- Every response, errors included, carries a Content-Security-Policy (no inline script or
  style: ``/static/app.js`` and ``app.css``; no framing), ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin`` (``no-referrer`` would
  make browsers send ``Origin: null`` on our own POSTs, Fetch 3.1), ``Cross-Origin-Resource-Policy:
  same-origin`` and ``Cache-Control: no-store`` (pages, API and slice images show PHI; only
  ``/static`` may be cached, revalidated). (:mod:`dicom_ai.web.security`)
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import sessionmaker
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp

from dicom_ai.cache.store import FileStore
from dicom_ai.config import Settings
from dicom_ai.web.auth import Authenticator
from dicom_ai.web.deps import LoginRequired, WebContext
from dicom_ai.web.metrics import IndexCollector
from dicom_ai.web.routes import admin, api, login, node, pages, viewer
from dicom_ai.web.security import Guard, session_secret
from dicom_ai.web.viewer import MaskCache

HERE = Path(__file__).parent
ROUTERS = (node.router, login.router, pages.router, admin.router, api.router, viewer.router)
"""Included in this order, which is the order of the paths in the OpenAPI schema."""


class _App(FastAPI):
    """FastAPI with :class:`~dicom_ai.web.security.Guard` outside every other middleware."""

    trusted_origins: tuple[str, ...] = ()

    def build_middleware_stack(self) -> ASGIApp:
        return Guard(super().build_middleware_stack(), self.trusted_origins)


async def _to_login(request: Request, _exc: LoginRequired):
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


async def _http_error(request: Request, exc: HTTPException):
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(settings: Settings, sessions: sessionmaker) -> FastAPI:
    """The web application of one node."""
    web = settings.web
    store = FileStore(settings.node.data_dir)
    # the schema is served behind the login (routes.api); the interactive /docs pages would
    # need scripts from a CDN, which a hospital network does not reach
    app = _App(title="dicom-ai", version="0.1", summary="AI results of a DICOM node: worklist, "
               "studies, series, jobs, results, deliveries, models",
               docs_url=None, redoc_url=None, openapi_url=None)
    app.trusted_origins = tuple(web.trusted_origins)
    # RFC 6265bis 4.1.3.2: a __Host- cookie is Secure, for path / and no Domain
    app.add_middleware(SessionMiddleware, secret_key=session_secret(settings.node.data_dir),
                       max_age=int(web.session_hours * 3600), same_site="strict",
                       https_only=web.secure_cookies,
                       session_cookie="__Host-dicom_ai_session" if web.secure_cookies else "dicom_ai_session")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    authn = Authenticator(sessions, per_user=web.login_failures_per_user,
                          per_address=web.login_failures_per_address,
                          max_seconds=web.login_lockout_max_seconds,
                          basic_cache_seconds=web.basic_cache_seconds)
    app.state.authenticator = authn
    broker = None
    if settings.node.executor == "celery":
        from dicom_ai.dispatch import broker_up, celery_app  # deferred: Celery, only in this mode

        celery = celery_app(settings)
        broker = lambda: broker_up(celery)  # noqa: E731
    registry = CollectorRegistry()
    registry.register(IndexCollector(sessions, settings.node.data_dir, settings.worker.lost_after_seconds,
                                     broker_up=broker))
    app.state.web = WebContext(settings=settings, sessions=sessions, store=store, authn=authn,
                               metrics=registry, masks=MaskCache(), lifetime=web.session_hours * 3600,
                               broker_up=broker)
    app.add_exception_handler(LoginRequired, _to_login)  # type: ignore[arg-type]  # Starlette types handlers' exc as Exception
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]  # ditto
    return app

"""The FastAPI application: worklist, study and admin pages, REST API, /metrics, /health.

Every page and API route needs a logged-in user (a session cookie from ``/login``, or HTTP
Basic on the API); actions (re-run, resend, destination check) need the admin role. Only
``/metrics``, ``/health`` and ``/static`` are open. The OpenAPI schema is at ``/openapi.json``
(logged in).

Protections (each rule is enforced below, and tested in ``tests/web/test_security.py``):

- Cross-site request forgery (OWASP CSRF Prevention Cheat Sheet): every state-changing request
  (POST, PUT, PATCH, DELETE), ``/login`` and ``/logout`` included, is refused with 403 when the
  browser says it comes from elsewhere: ``Sec-Fetch-Site`` (Fetch Metadata) ``cross-site`` or
  ``same-site`` (SameSite cookies ignore the port, so another port of this host is "same
  site"), or an ``Origin`` (or, without one, ``Referer``) other than this request's own origin
  or a ``[web] trusted_origins`` entry. A request authenticated by the session cookie must also
  carry the session's token (synchronizer token pattern), in the ``csrf_token`` form field or
  the ``X-CSRF-Token`` header. HTTP Basic clients need no token: a browser that remembered Basic
  credentials is still stopped by the origin check.
- Sessions (RFC 6265 cookie, signed, HttpOnly, SameSite=Strict, ``Secure`` and ``__Host-``
  with ``[web] secure_cookies``) carry the user's id, name and ``session_version`` and no role:
  each request re-reads role and version from the index, so logout (which raises the version,
  ending all the user's sessions), a new role or password end them at once. Login starts a new
  session with a new CSRF token (no session fixation), valid ``session_hours`` from login.
- Logins (form and Basic) are throttled per name and per address, fail in the same time for
  unknown names, and run scrypt in a bounded pool (:mod:`dicom_ai.web.auth`): 429 or 503 with
  ``Retry-After``.
- Every response, errors included, carries a Content-Security-Policy (no inline script or
  style: ``/static/app.js`` and ``app.css``; no framing), ``X-Frame-Options: DENY``,
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin`` (``no-referrer`` would
  make browsers send ``Origin: null`` on our own POSTs, Fetch 3.1), ``Cross-Origin-Resource-Policy:
  same-origin`` and ``Cache-Control: no-store`` (pages, API and slice images show PHI; only
  ``/static`` may be cached, revalidated).
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_ai.cache.db import (Delivery, IdentityConflict, Job, ModelEvent, ModelVersion, Result, Series,
                               utcnow)
from dicom_ai.cache.store import FileStore
from dicom_ai.config import Settings
from dicom_ai.web import data
from dicom_ai.web.auth import Authenticator, Busy, Identity, Throttled
from dicom_ai.web.metrics import IndexCollector
from dicom_ai.web.viewer import PRESETS, MaskCache, render_slice

HERE = Path(__file__).parent
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 9.2.1
MAX_ID = 2**63 - 1  # the index's integer keys are signed 64-bit
Limit = Annotated[int, Query(ge=1, le=10000, description="at most this many rows (1 to 10000)")]
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def _csrf_context(request: Request) -> dict[str, Any]:
    return {"csrf": request.session.get("csrf", "")}


TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"), context_processors=[_csrf_context])


class LoginRequired(Exception):
    """A page asked for by someone not logged in: redirect to /login."""


def _secret(data_dir: Path) -> str:
    """The session signing key, made once per data_dir (mode 0600)."""
    path = Path(data_dir) / "web-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip()


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


class _App(FastAPI):
    """FastAPI with :class:`Guard` outside every other middleware."""

    trusted_origins: tuple[str, ...] = ()

    def build_middleware_stack(self) -> ASGIApp:
        return Guard(super().build_middleware_stack(), self.trusted_origins)


def _same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def _row_id(value: int, what: str) -> int:
    """``value`` when it can be a key of the index, else 404 ``no such <what>``."""
    if not 0 < value <= MAX_ID:
        raise HTTPException(404, f"no such {what}")
    return value


def create_app(settings: Settings, sessions: sessionmaker) -> FastAPI:
    """The web application of one node."""
    web = settings.web
    store = FileStore(settings.node.data_dir)
    # the schema is served behind the login below; the interactive /docs pages would need
    # scripts from a CDN, which a hospital network does not reach
    app = _App(title="dicom-ai", version="0.1", summary="AI results of a DICOM node: worklist, "
               "studies, series, jobs, results, deliveries, models",
               docs_url=None, redoc_url=None, openapi_url=None)
    app.trusted_origins = tuple(web.trusted_origins)
    # RFC 6265bis 4.1.3.2: a __Host- cookie is Secure, for path / and no Domain
    app.add_middleware(SessionMiddleware, secret_key=_secret(settings.node.data_dir),
                       max_age=int(web.session_hours * 3600), same_site="strict",
                       https_only=web.secure_cookies,
                       session_cookie="__Host-dicom_ai_session" if web.secure_cookies else "dicom_ai_session")
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    authn = Authenticator(sessions, per_user=web.login_failures_per_user,
                          per_address=web.login_failures_per_address,
                          max_seconds=web.login_lockout_max_seconds,
                          basic_cache_seconds=web.basic_cache_seconds)
    app.state.authenticator = authn
    lifetime = web.session_hours * 3600
    registry = CollectorRegistry()
    registry.register(IndexCollector(sessions, settings.node.data_dir))
    masks = MaskCache()
    checks: dict[str, dict[str, str]] = {}
    lock = threading.Lock()

    def address(request: Request) -> str:
        return request.client.host if request.client else ""

    def identify(request: Request) -> Identity | None:
        """The session's user as the index says now, else the HTTP Basic user (RFC 7617).

        Raises
        ------
        HTTPException
            429 while Basic logins of the name or from the address are throttled, 503 when the
            password checks are busy (both with Retry-After).
        """
        session = request.session
        if "uid" in session:
            who = authn.current(session.get("uid"), session.get("sv"), session.get("name", ""))
            at = session.get("at")
            if who is not None and isinstance(at, (int, float)) and 0 <= time.time() - at < lifetime:
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
                who = authn.basic(name, password, address(request))
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
        if not _same(str(request.session.get("csrf", "")), given or ""):
            raise HTTPException(403, "CSRF token missing or wrong: reload the page")

    def reader(request: Request) -> Identity:
        who = identify(request)
        if who is None:
            if request.url.path.startswith("/api/"):
                raise HTTPException(401, "log in first", headers={"WWW-Authenticate": 'Basic realm="dicom-ai"'})
            raise LoginRequired()
        if request.method not in SAFE_METHODS and request.state.via == "session":
            check_csrf(request, request.headers.get("x-csrf-token", ""))
        return who

    def admin(who: Identity = Depends(reader)) -> Identity:
        if who.role != "admin":
            raise HTTPException(403, "admin role needed")
        return who

    @app.exception_handler(LoginRequired)
    async def _to_login(request: Request, _exc: LoginRequired):
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    # -- open -------------------------------------------------------------------------------
    @app.get("/health", tags=["node"])
    def health() -> dict[str, str]:
        """Liveness: the web process answers and the index can be read."""
        with sessions() as s:
            s.execute(select(Series.id).limit(1))
        return {"status": "ok"}

    @app.get("/metrics", tags=["node"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text exposition format."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- login --------------------------------------------------------------------------------
    def login_form(request: Request, next: str, error: str = "", status_code: int = 200,
                   headers: dict[str, str] | None = None):
        if not request.session.get("csrf"):
            request.session["csrf"] = secrets.token_urlsafe(32)  # login CSRF: the form's own token
        return TEMPLATES.TemplateResponse(request, "login.html", {"next": next, "error": error, "user": None},
                                          status_code=status_code, headers=headers)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/", error: str = ""):
        return login_form(request, next, error)

    @app.post("/login", include_in_schema=False)
    def login(request: Request, username: str = Form(...), password: str = Form(...), next: str = Form("/"),
              csrf_token: str = Form("")):
        """A new session for the user: 303 to ``next`` (on this site only); 403 without the login
        form's CSRF token, 401 wrong name or password, 429 throttled, 503 busy."""
        if not _same(str(request.session.get("csrf", "")), csrf_token):
            return login_form(request, next, "the login form had expired: please log in again", 403)
        try:
            found = authn.login(username, password, address(request))
        except Throttled as exc:
            return login_form(request, next, str(exc), 429, {"Retry-After": str(exc.retry_after)})
        except Busy as exc:
            return login_form(request, next, str(exc), 503, {"Retry-After": "1"})
        if found is None:
            return login_form(request, next, "wrong name or password", 401)
        request.session.clear()  # a new session: nothing of the one before login carries over
        request.session.update(uid=found.id, name=found.name, sv=found.session_version,
                               csrf=secrets.token_urlsafe(32), at=time.time())
        local = next.startswith("/") and not next.startswith("//") and "\\" not in next
        return RedirectResponse(next if local else "/", status_code=303)  # never off-site

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf_token: str = Form("")):
        """End the session, and every other session of the same user (its session_version
        goes up); 403 without the session's CSRF token."""
        if "uid" in request.session:
            check_csrf(request, csrf_token)
            who = authn.current(request.session.get("uid"), request.session.get("sv"),
                                request.session.get("name", ""))
            if who is not None:
                authn.revoke(who.id)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # -- pages ----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(request: Request, q: str = "", date_from: str = "", date_to: str = "",
                      modality: str = "", status: str = "", sort: str = "received", desc: bool = True,
                      who: Identity = Depends(reader)):
        with sessions() as s:
            rows = data.worklist(s, q=q, date_from=date_from, date_to=date_to, modality=modality,
                                 status=status, sort=sort, desc=desc)
        return TEMPLATES.TemplateResponse(request, "worklist.html", {
            "rows": rows, "user": who, "statuses": data.STATUSES, "refresh": settings.web.refresh_seconds,
            "f": {"q": q, "date_from": date_from, "date_to": date_to, "modality": modality,
                  "status": status, "sort": sort, "desc": desc}})

    @app.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False)
    def study_page(request: Request, study_uid: str, who: Identity = Depends(reader)):
        with sessions() as s:
            study = data.study_detail(s, study_uid)
        if study is None:
            raise HTTPException(404, "no such study")
        viewable = [j for j in study["jobs"] if j["state"] == "done"
                    and store.abspath(f"results/{j['id']}/mask.npz").exists()]
        return TEMPLATES.TemplateResponse(request, "study.html", {
            "s": study, "user": who, "viewable": viewable, "presets": list(PRESETS)})

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(request: Request, who: Identity = Depends(admin)):
        from dicom_ai.schedule.routing import enabled_models, routes

        models = enabled_models(settings, sessions)
        with sessions() as s:
            failed = [data.delivery_dict(d) | {"kind": d.result.kind, "sop": d.result.sop_instance_uid}
                      for d in s.scalars(select(Delivery).where(Delivery.state == "failed"))]
            versions = s.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id)).all()
            events = s.scalars(select(ModelEvent).order_by(ModelEvent.id.desc()).limit(20)).all()
            conflicts = s.scalars(select(IdentityConflict).order_by(IdentityConflict.id.desc()).limit(20)).all()
        return TEMPLATES.TemplateResponse(request, "admin.html", {
            "versions": versions, "events": events, "conflicts": conflicts,
            "user": who, "models": models, "routes": routes(settings, models), "rules": settings.rules,
            "destinations": settings.destinations, "checks": checks, "failed": failed})

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_who: Identity = Depends(reader)) -> dict[str, Any]:
        return app.openapi()

    # -- REST -------------------------------------------------------------------------------
    @app.get("/api/studies", tags=["studies"])
    def api_studies(q: str = "", date_from: str = "", date_to: str = "", modality: str = "",
                    status: str = "", sort: str = "received", desc: bool = True, limit: Limit = 1000,
                    _who: Identity = Depends(reader)) -> list[dict[str, Any]]:
        """Worklist rows: one per study, with each model's AI status and findings."""
        with sessions() as s:
            return data.worklist(s, q=q, date_from=date_from, date_to=date_to, modality=modality,
                                 status=status, sort=sort, desc=desc, limit=limit)

    @app.get("/api/studies/{study_uid}", tags=["studies"])
    def api_study(study_uid: str, _who: Identity = Depends(reader)) -> dict[str, Any]:
        """A study with its series, jobs, results, deliveries and timeline."""
        with sessions() as s:
            study = data.study_detail(s, study_uid)
        if study is None:
            raise HTTPException(404, "no such study")
        return study

    @app.get("/api/series/{series_uid}", tags=["series"])
    def api_series(series_uid: str, _who: Identity = Depends(reader)) -> dict[str, Any]:
        """A series: its state, completion signal and routing decisions."""
        with sessions() as s:
            series = s.scalar(select(Series).where(Series.series_instance_uid == series_uid))
            if series is None:
                raise HTTPException(404, "no such series")
            return data.series_dict(series)

    @app.get("/api/jobs", tags=["jobs"])
    def api_jobs(state: str = "", limit: Limit = 100, _who: Identity = Depends(reader)) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return _latest(Job, state, limit, data.job_dict)

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def api_job(job_id: int, _who: Identity = Depends(reader)) -> dict[str, Any]:
        with sessions() as s:
            job = s.get(Job, _row_id(job_id, "job"))
            if job is None:
                raise HTTPException(404, "no such job")
            return data.job_dict(job)

    @app.post("/api/jobs/{job_id}/rerun", tags=["jobs"], status_code=201)
    def api_rerun(job_id: int, who: Identity = Depends(admin)) -> dict[str, Any]:
        """Queue the job's model again on its series (admin)."""
        with sessions.begin() as s:
            job = s.get(Job, _row_id(job_id, "job"))
            if job is None:
                raise HTTPException(404, "no such job")
            again = Job(series_fk=job.series_fk, model_name=job.model_name, model_version=job.model_version,
                        model_path=job.model_path, rule=f"re-run by {who.name}", priority=job.priority,
                        destinations=job.destinations)
            s.add(again)
            s.flush()
            return {"job_id": again.id, "state": again.state}

    @app.get("/api/results", tags=["results"])
    def api_results(limit: Limit = 100, _who: Identity = Depends(reader)) -> list[dict[str, Any]]:
        with sessions() as s:
            return [data.result_dict(r) for r in s.scalars(select(Result).order_by(Result.id.desc()).limit(limit))]

    @app.get("/api/deliveries", tags=["deliveries"])
    def api_deliveries(state: str = "", limit: Limit = 100, _who: Identity = Depends(reader)) -> list[dict[str, Any]]:
        """Deliveries, newest first; ``state=failed`` lists the dead letters."""
        return _latest(Delivery, state, limit, data.delivery_dict)

    @app.post("/api/deliveries/{delivery_id}/resend", tags=["deliveries"])
    def api_resend(delivery_id: int, _who: Identity = Depends(admin)) -> dict[str, Any]:
        """Make a delivery due again, with a new retry horizon (admin)."""
        from dicom_ai.export.outbox import resend

        if resend(sessions, [_row_id(delivery_id, "delivery")]) == 0:
            raise HTTPException(404, "no such delivery")
        return {"delivery_id": delivery_id, "state": "pending"}

    @app.get("/api/models", tags=["models"])
    def api_models(_who: Identity = Depends(reader)) -> list[dict[str, Any]]:
        """Enabled models with their rules."""
        from dicom_ai.schedule.routing import enabled_models, routes

        models = enabled_models(settings, sessions)
        rules = routes(settings, models)
        return [{"name": m.manifest.name, "version": m.manifest.version, "task": m.manifest.task,
                 "runtime": m.manifest.runtime, "modalities": list(m.modalities),
                 "labels": [lb.name for lb in m.manifest.labels], "classes": [c.name for c in m.manifest.classes],
                 "rules": [r.rule.name for r in rules if r.model is m]} for m in models]

    @app.post("/api/destinations/{name}/check", tags=["deliveries"])
    def api_check(name: str, _who: Identity = Depends(admin)) -> dict[str, str]:
        """C-ECHO / QIDO-RS / folder check of a destination; kept for the admin page (admin)."""
        from dicom_ai.export.outbox import check_destination

        dest = settings.destination(name)
        if dest is None:
            raise HTTPException(404, "no such destination")
        try:
            result = {"ok": "yes", "detail": check_destination(dest, settings)}
        except (ConnectionError, OSError) as exc:
            result = {"ok": "no", "detail": str(exc)}
        result["at"] = utcnow().isoformat(timespec="seconds") + "Z"
        with lock:
            checks[name] = result
        return result

    @app.get("/api/identity-conflicts", tags=["node"])
    def api_conflicts(limit: Limit = 100, _who: Identity = Depends(admin)) -> list[dict[str, Any]]:
        """Instances refused at receive for a patient-identity conflict, newest first (admin:
        reviewing them is the node operator's work, and the refused instances are in no
        worklist)."""
        with sessions() as s:
            rows = s.scalars(select(IdentityConflict).order_by(IdentityConflict.id.desc()).limit(limit))
            return [data.conflict_dict(c) for c in rows]

    @app.get("/api/jobs/{job_id}/viewer", tags=["viewer"])
    def api_viewer(job_id: int, _who: Identity = Depends(reader)) -> dict[str, Any]:
        """What the slice viewer needs: number of slices, window presets, segment colours."""
        item = _mask(job_id)
        return {"n_slices": len(item["paths"]), "presets": list(PRESETS),
                "colors": {str(k): v for k, v in item["colors"].items()}}

    @app.get("/api/jobs/{job_id}/slices/{index}.png", tags=["viewer"], response_class=Response)
    def api_slice(job_id: int, index: int, preset: str = "lung", overlay: bool = True,
                  _who: Identity = Depends(reader)) -> Response:
        """Slice ``index`` (0 = first in slice order) as PNG, segments over the image."""
        item = _mask(job_id)
        try:
            png = render_slice(settings.node.data_dir, item, index, preset, overlay)
        except (IndexError, KeyError):
            raise HTTPException(404, "no such slice or preset") from None
        return Response(png, media_type="image/png")  # Cache-Control: no-store (Guard): the pixels are PHI

    def _latest(model: Any, state: str, limit: int, to_dict: Any) -> list[dict[str, Any]]:
        with sessions() as s:
            stmt = select(model).order_by(model.id.desc()).limit(limit)
            if state:
                stmt = stmt.where(model.state == state)
            return [to_dict(row) for row in s.scalars(stmt)]

    def _mask(job_id: int) -> dict:
        try:
            return masks.get(store.abspath(f"results/{_row_id(job_id, 'job')}/mask.npz"))
        except FileNotFoundError:
            raise HTTPException(404, "no segmentation for this job") from None

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return app

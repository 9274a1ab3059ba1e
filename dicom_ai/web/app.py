"""The FastAPI application: worklist, study and admin pages, REST API, /metrics, /health.

Every page and API route needs a logged-in user (a session cookie from ``/login``, or HTTP
Basic on the API); actions (re-run, resend, destination check) need the admin role. Only
``/metrics`` and ``/health`` are open. The OpenAPI schema is at ``/openapi.json`` (logged in).
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from dicom_ai.cache.db import Delivery, Job, ModelEvent, ModelVersion, Result, Series, utcnow
from dicom_ai.cache.store import FileStore
from dicom_ai.config import Settings
from dicom_ai.web import data
from dicom_ai.web.auth import authenticate
from dicom_ai.web.metrics import IndexCollector
from dicom_ai.web.viewer import PRESETS, MaskCache, render_slice

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


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


def create_app(settings: Settings, sessions: sessionmaker) -> FastAPI:
    """The web application of one node."""
    store = FileStore(settings.node.data_dir)
    # the schema is served behind the login below; the interactive /docs pages would need
    # scripts from a CDN, which a hospital network does not reach
    app = FastAPI(title="dicom-ai", version="0.1", summary="AI results of a DICOM node: worklist, "
                  "studies, series, jobs, results, deliveries, models",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SessionMiddleware, secret_key=_secret(settings.node.data_dir),
                       max_age=int(settings.web.session_hours * 3600), same_site="strict",
                       session_cookie="dicom_ai_session")
    registry = CollectorRegistry()
    registry.register(IndexCollector(sessions, settings.node.data_dir))
    masks = MaskCache()
    checks: dict[str, dict[str, str]] = {}
    lock = threading.Lock()

    def user(request: Request) -> dict[str, str] | None:
        who = request.session.get("user")
        if who:
            return who
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return None
            found = authenticate(sessions, name, password)
            if found:
                return {"name": found[0], "role": found[1]}
        return None

    def reader(request: Request) -> dict[str, str]:
        who = user(request)
        if who is None:
            if request.url.path.startswith("/api/"):
                raise HTTPException(401, "log in first", headers={"WWW-Authenticate": "Basic"})
            raise LoginRequired()
        return who

    def admin(who: dict[str, str] = Depends(reader)) -> dict[str, str]:
        if who["role"] != "admin":
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
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request, next: str = "/", error: str = ""):
        return TEMPLATES.TemplateResponse(request, "login.html", {"next": next, "error": error, "user": None})

    @app.post("/login", include_in_schema=False)
    def login(request: Request, username: str = Form(...), password: str = Form(...), next: str = Form("/")):
        found = authenticate(sessions, username, password)
        if found is None:
            return TEMPLATES.TemplateResponse(request, "login.html", {"next": next, "user": None,
                                              "error": "wrong name or password"}, status_code=401)
        request.session["user"] = {"name": found[0], "role": found[1]}
        local = next.startswith("/") and not next.startswith("//") and "\\" not in next
        return RedirectResponse(next if local else "/", status_code=303)  # never off-site

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request):
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # -- pages ----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(request: Request, q: str = "", date_from: str = "", date_to: str = "",
                      modality: str = "", status: str = "", sort: str = "received", desc: bool = True,
                      who: dict = Depends(reader)):
        with sessions() as s:
            rows = data.worklist(s, q=q, date_from=date_from, date_to=date_to, modality=modality,
                                 status=status, sort=sort, desc=desc)
        return TEMPLATES.TemplateResponse(request, "worklist.html", {
            "rows": rows, "user": who, "statuses": data.STATUSES, "refresh": settings.web.refresh_seconds,
            "f": {"q": q, "date_from": date_from, "date_to": date_to, "modality": modality,
                  "status": status, "sort": sort, "desc": desc}})

    @app.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False)
    def study_page(request: Request, study_uid: str, who: dict = Depends(reader)):
        with sessions() as s:
            study = data.study_detail(s, study_uid)
        if study is None:
            raise HTTPException(404, "no such study")
        viewable = [j for j in study["jobs"] if j["state"] == "done"
                    and store.abspath(f"results/{j['id']}/mask.npz").exists()]
        return TEMPLATES.TemplateResponse(request, "study.html", {
            "s": study, "user": who, "viewable": viewable, "presets": list(PRESETS)})

    @app.get("/admin", response_class=HTMLResponse, include_in_schema=False)
    def admin_page(request: Request, who: dict = Depends(admin)):
        from dicom_ai.schedule.routing import enabled_models, routes

        models = enabled_models(settings, sessions)
        with sessions() as s:
            failed = [data.delivery_dict(d) | {"kind": d.result.kind, "sop": d.result.sop_instance_uid}
                      for d in s.scalars(select(Delivery).where(Delivery.state == "failed"))]
            versions = s.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id)).all()
            events = s.scalars(select(ModelEvent).order_by(ModelEvent.id.desc()).limit(20)).all()
        return TEMPLATES.TemplateResponse(request, "admin.html", {
            "versions": versions, "events": events,
            "user": who, "models": models, "routes": routes(settings, models), "rules": settings.rules,
            "destinations": settings.destinations, "checks": checks, "failed": failed})

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(_who: dict = Depends(reader)) -> dict[str, Any]:
        return app.openapi()

    # -- REST -------------------------------------------------------------------------------
    @app.get("/api/studies", tags=["studies"])
    def api_studies(q: str = "", date_from: str = "", date_to: str = "", modality: str = "",
                    status: str = "", sort: str = "received", desc: bool = True, limit: int = 1000,
                    _who: dict = Depends(reader)) -> list[dict[str, Any]]:
        """Worklist rows: one per study, with each model's AI status and findings."""
        with sessions() as s:
            return data.worklist(s, q=q, date_from=date_from, date_to=date_to, modality=modality,
                                 status=status, sort=sort, desc=desc, limit=limit)

    @app.get("/api/studies/{study_uid}", tags=["studies"])
    def api_study(study_uid: str, _who: dict = Depends(reader)) -> dict[str, Any]:
        """A study with its series, jobs, results, deliveries and timeline."""
        with sessions() as s:
            study = data.study_detail(s, study_uid)
        if study is None:
            raise HTTPException(404, "no such study")
        return study

    @app.get("/api/series/{series_uid}", tags=["series"])
    def api_series(series_uid: str, _who: dict = Depends(reader)) -> dict[str, Any]:
        """A series: its state, completion signal and routing decisions."""
        with sessions() as s:
            series = s.scalar(select(Series).where(Series.series_instance_uid == series_uid))
            if series is None:
                raise HTTPException(404, "no such series")
            return data.series_dict(series)

    @app.get("/api/jobs", tags=["jobs"])
    def api_jobs(state: str = "", limit: int = 100, _who: dict = Depends(reader)) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return _latest(Job, state, limit, data.job_dict)

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def api_job(job_id: int, _who: dict = Depends(reader)) -> dict[str, Any]:
        with sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise HTTPException(404, "no such job")
            return data.job_dict(job)

    @app.post("/api/jobs/{job_id}/rerun", tags=["jobs"], status_code=201)
    def api_rerun(job_id: int, who: dict = Depends(admin)) -> dict[str, Any]:
        """Queue the job's model again on its series (admin)."""
        with sessions.begin() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise HTTPException(404, "no such job")
            again = Job(series_fk=job.series_fk, model_name=job.model_name, model_version=job.model_version,
                        model_path=job.model_path, rule=f"re-run by {who['name']}", priority=job.priority,
                        destinations=job.destinations)
            s.add(again)
            s.flush()
            return {"job_id": again.id, "state": again.state}

    @app.get("/api/results", tags=["results"])
    def api_results(limit: int = 100, _who: dict = Depends(reader)) -> list[dict[str, Any]]:
        with sessions() as s:
            return [data.result_dict(r) for r in s.scalars(select(Result).order_by(Result.id.desc()).limit(limit))]

    @app.get("/api/deliveries", tags=["deliveries"])
    def api_deliveries(state: str = "", limit: int = 100, _who: dict = Depends(reader)) -> list[dict[str, Any]]:
        """Deliveries, newest first; ``state=failed`` lists the dead letters."""
        return _latest(Delivery, state, limit, data.delivery_dict)

    @app.post("/api/deliveries/{delivery_id}/resend", tags=["deliveries"])
    def api_resend(delivery_id: int, _who: dict = Depends(admin)) -> dict[str, Any]:
        """Make a delivery due again, with a new retry horizon (admin)."""
        from dicom_ai.export.outbox import resend

        if resend(sessions, [delivery_id]) == 0:
            raise HTTPException(404, "no such delivery")
        return {"delivery_id": delivery_id, "state": "pending"}

    @app.get("/api/models", tags=["models"])
    def api_models(_who: dict = Depends(reader)) -> list[dict[str, Any]]:
        """Enabled models with their rules."""
        from dicom_ai.schedule.routing import enabled_models, routes

        models = enabled_models(settings, sessions)
        rules = routes(settings, models)
        return [{"name": m.manifest.name, "version": m.manifest.version, "task": m.manifest.task,
                 "runtime": m.manifest.runtime, "modalities": list(m.modalities),
                 "labels": [lb.name for lb in m.manifest.labels], "classes": [c.name for c in m.manifest.classes],
                 "rules": [r.rule.name for r in rules if r.model is m]} for m in models]

    @app.post("/api/destinations/{name}/check", tags=["deliveries"])
    def api_check(name: str, _who: dict = Depends(admin)) -> dict[str, str]:
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

    @app.get("/api/jobs/{job_id}/viewer", tags=["viewer"])
    def api_viewer(job_id: int, _who: dict = Depends(reader)) -> dict[str, Any]:
        """What the slice viewer needs: number of slices, window presets, segment colours."""
        item = _mask(job_id)
        return {"n_slices": len(item["paths"]), "presets": list(PRESETS),
                "colors": {str(k): v for k, v in item["colors"].items()}}

    @app.get("/api/jobs/{job_id}/slices/{index}.png", tags=["viewer"], response_class=Response)
    def api_slice(job_id: int, index: int, preset: str = "lung", overlay: bool = True,
                  _who: dict = Depends(reader)) -> Response:
        """Slice ``index`` (0 = first in slice order) as PNG, segments over the image."""
        item = _mask(job_id)
        try:
            png = render_slice(settings.node.data_dir, item, index, preset, overlay)
        except (IndexError, KeyError):
            raise HTTPException(404, "no such slice or preset") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def _latest(model: Any, state: str, limit: int, to_dict: Any) -> list[dict[str, Any]]:
        with sessions() as s:
            stmt = select(model).order_by(model.id.desc()).limit(limit)
            if state:
                stmt = stmt.where(model.state == state)
            return [to_dict(row) for row in s.scalars(stmt)]

    def _mask(job_id: int) -> dict:
        try:
            return masks.get(store.abspath(f"results/{job_id}/mask.npz"))
        except FileNotFoundError:
            raise HTTPException(404, "no segmentation for this job") from None

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return app

"""The admin page (``/admin``, admin role): models and their rules, the registry's versions
and recent changes, inference workers, destinations with their last check, dead letters,
identity conflicts."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from dicom_ai.cache import queries
from dicom_ai.cache.workers import workers
from dicom_ai.schedule.routing import enabled_models, routes
from dicom_ai.web import data
from dicom_ai.web.auth import Identity
from dicom_ai.web.deps import TEMPLATES, WebContext, admin, context

router = APIRouter()


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
def admin_page(request: Request, who: Identity = Depends(admin), ctx: WebContext = Depends(context)):
    settings, sessions = ctx.settings, ctx.sessions
    models = enabled_models(settings, sessions)
    with sessions() as s:
        failed = [data.delivery_dict(d) | {"kind": d.result.kind, "sop": d.result.sop_instance_uid}
                  for d in queries.failed_deliveries(s)]
        versions = queries.model_versions(s)
        events = queries.model_events(s, 20)
        conflicts = queries.identity_conflicts(s, 20)
    return TEMPLATES.TemplateResponse(request, "admin.html", {
        "versions": versions, "events": events, "conflicts": conflicts,
        "workers": workers(sessions, settings.worker.lost_after_seconds),
        "user": who, "models": models, "routes": routes(settings, models), "rules": settings.rules,
        "destinations": settings.destinations, "checks": ctx.checks, "failed": failed})

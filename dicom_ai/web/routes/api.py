"""The REST API under ``/api`` (JSON), and its OpenAPI schema at ``/openapi.json``.

Reading needs a logged-in user; approving or rejecting a job's results needs the reviewer or
admin role; re-running a job, resending a delivery, checking a destination
and listing identity conflicts need the admin role. An unknown or out-of-range id answers 404;
``limit`` is a number of rows, 1 to 10000 (422 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from dicom_ai.cache import queries
from dicom_ai.cache.db import Delivery, Job, Result, utcnow
from dicom_ai.cache.states import DeliveryState, ReviewState
from dicom_ai.export.outbox import check_destination, resend
from dicom_ai.export.review import ReviewError, approve, reject
from dicom_ai.schedule.routing import enabled_models, routes
from dicom_ai.web import data
from dicom_ai.web.auth import Identity
from dicom_ai.web.deps import Limit, WebContext, admin, context, reader, reviewer, row_id

router = APIRouter()
Row = TypeVar("Row")


def _newest(ctx: WebContext, model: type[Row], as_dict: Callable[[Row], dict[str, Any]], limit: int,
            state: str = "") -> list[dict[str, Any]]:
    """At most ``limit`` rows of ``model``, newest first (only those in ``state`` when given),
    each as ``as_dict`` makes it."""
    with ctx.sessions() as s:
        return [as_dict(row) for row in queries.newest(s, model, limit, state)]


def _found(value: Row | None, what: str) -> Row:
    """``value``; 404 ``no such <what>`` when it is None."""
    if value is None:
        raise HTTPException(404, f"no such {what}")
    return value


def _row_or_404(s: Any, model: type[Row], key: int, what: str) -> Row:
    """The ``model`` row with id ``key``; 404 ``no such <what>`` when there is none."""
    return _found(s.get(model, row_id(key, what)), what)


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, _who: Identity = Depends(reader)) -> dict[str, Any]:
    return request.app.openapi()


@router.get("/api/studies", tags=["studies"])
def api_studies(q: str = "", date_from: str = "", date_to: str = "", modality: str = "",
                status: str = "", sort: str = "received", desc: bool = True, limit: Limit = 1000,
                _who: Identity = Depends(reader), ctx: WebContext = Depends(context)) -> list[dict[str, Any]]:
    """Worklist rows: one per study, with each model's AI status and findings."""
    with ctx.sessions() as s:
        return data.worklist(s, q=q, date_from=date_from, date_to=date_to, modality=modality,
                             status=status, sort=sort, desc=desc, limit=limit)


@router.get("/api/studies/{study_uid}", tags=["studies"])
def api_study(study_uid: str, _who: Identity = Depends(reader),
              ctx: WebContext = Depends(context)) -> dict[str, Any]:
    """A study with its series, jobs, results, deliveries and timeline."""
    with ctx.sessions() as s:
        return _found(data.study_detail(s, study_uid), "study")


@router.get("/api/series/{series_uid}", tags=["series"])
def api_series(series_uid: str, _who: Identity = Depends(reader),
               ctx: WebContext = Depends(context)) -> dict[str, Any]:
    """A series: its state, completion signal and routing decisions."""
    with ctx.sessions() as s:
        return data.series_dict(_found(queries.series_by_uid(s, series_uid), "series"))


@router.get("/api/jobs", tags=["jobs"])
def api_jobs(state: str = "", limit: Limit = 100, _who: Identity = Depends(reader),
             ctx: WebContext = Depends(context)) -> list[dict[str, Any]]:
    """Jobs, newest first."""
    return _newest(ctx, Job, data.job_dict, limit, state)


@router.get("/api/jobs/{job_id}", tags=["jobs"])
def api_job(job_id: int, _who: Identity = Depends(reader), ctx: WebContext = Depends(context)) -> dict[str, Any]:
    with ctx.sessions() as s:
        return data.job_dict(_row_or_404(s, Job, job_id, "job"))


@router.post("/api/jobs/{job_id}/rerun", tags=["jobs"], status_code=201)
def api_rerun(job_id: int, who: Identity = Depends(admin), ctx: WebContext = Depends(context)) -> dict[str, Any]:
    """Queue the job's model again on its series (admin)."""
    with ctx.sessions.begin() as s:
        job = _row_or_404(s, Job, job_id, "job")
        again = Job(series_fk=job.series_fk, model_name=job.model_name, model_version=job.model_version,
                    model_path=job.model_path, rule=f"re-run by {who.name}", priority=job.priority,
                    destinations=job.destinations, queue=job.queue,
                    # a re-run of a reviewed job is reviewed again
                    review=ReviewState.AWAITING if job.review else ReviewState.NONE)
        s.add(again)
        s.flush()
        return {"job_id": again.id, "state": again.state}


class ReviewDecision(BaseModel):
    """A reviewer's decision on a job's results."""

    decision: Literal["approve", "reject"]
    comment: str = Field("", max_length=2000)


@router.post("/api/jobs/{job_id}/review", tags=["jobs"])
def api_review(job_id: int, body: ReviewDecision, who: Identity = Depends(reviewer),
               ctx: WebContext = Depends(context)) -> dict[str, Any]:
    """Approve (the SR becomes VERIFIED by you, the results are sent) or reject (nothing is
    sent; what was sent is withdrawn) a job's results (reviewer or admin). 409 when the job
    is not in a state to take the decision."""
    job_id = row_id(job_id, "job")
    try:
        if body.decision == "approve":
            approve(ctx.sessions, ctx.store, ctx.settings, job_id, who=who.name, role=who.role, comment=body.comment)
        else:
            reject(ctx.sessions, ctx.store, ctx.settings, job_id, who=who.name, role=who.role, comment=body.comment)
    except ReviewError as exc:
        raise HTTPException(409, str(exc)) from None
    with ctx.sessions() as s:
        job = _row_or_404(s, Job, job_id, "job")
        return {"job_id": job.id, "review": job.review, "status": data.job_status(job)}


@router.get("/api/results", tags=["results"])
def api_results(limit: Limit = 100, _who: Identity = Depends(reader),
                ctx: WebContext = Depends(context)) -> list[dict[str, Any]]:
    return _newest(ctx, Result, data.result_dict, limit)


@router.get("/api/deliveries", tags=["deliveries"])
def api_deliveries(state: str = "", limit: Limit = 100, _who: Identity = Depends(reader),
                   ctx: WebContext = Depends(context)) -> list[dict[str, Any]]:
    """Deliveries, newest first; ``state=failed`` lists the dead letters."""
    return _newest(ctx, Delivery, data.delivery_dict, limit, state)


@router.post("/api/deliveries/{delivery_id}/resend", tags=["deliveries"])
def api_resend(delivery_id: int, _who: Identity = Depends(admin),
               ctx: WebContext = Depends(context)) -> dict[str, Any]:
    """Make a delivery due again, with a new retry horizon (admin)."""
    if resend(ctx.sessions, [row_id(delivery_id, "delivery")]) == 0:
        raise HTTPException(404, "no such delivery")
    return {"delivery_id": delivery_id, "state": DeliveryState.PENDING}


@router.get("/api/models", tags=["models"])
def api_models(_who: Identity = Depends(reader), ctx: WebContext = Depends(context)) -> list[dict[str, Any]]:
    """Enabled models with their rules."""
    models = enabled_models(ctx.settings, ctx.sessions)
    rules = routes(ctx.settings, models)
    return [{"name": m.manifest.name, "version": m.manifest.version, "task": m.manifest.task,
             "runtime": m.manifest.runtime, "modalities": list(m.modalities),
             "labels": [lb.name for lb in m.manifest.labels], "classes": [c.name for c in m.manifest.classes],
             "rules": [r.rule.name for r in rules if r.model is m]} for m in models]


@router.post("/api/destinations/{name}/check", tags=["deliveries"])
def api_check(name: str, _who: Identity = Depends(admin), ctx: WebContext = Depends(context)) -> dict[str, str]:
    """C-ECHO / QIDO-RS / folder check of a destination; kept for the admin page (admin)."""
    dest = _found(ctx.settings.destination(name), "destination")
    try:
        result = {"ok": "yes", "detail": check_destination(dest, ctx.settings)}
    except (ConnectionError, OSError) as exc:
        result = {"ok": "no", "detail": str(exc)}
    result["at"] = utcnow().isoformat(timespec="seconds") + "Z"
    with ctx.lock:
        ctx.checks[name] = result
    return result


@router.get("/api/identity-conflicts", tags=["node"])
def api_conflicts(limit: Limit = 100, _who: Identity = Depends(admin),
                  ctx: WebContext = Depends(context)) -> list[dict[str, Any]]:
    """Instances refused at receive for a patient-identity conflict, newest first (admin:
    reviewing them is the node operator's work, and the refused instances are in no
    worklist)."""
    with ctx.sessions() as s:
        return [data.conflict_dict(c) for c in queries.identity_conflicts(s, limit)]

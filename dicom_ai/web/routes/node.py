"""``/health`` and ``/metrics``: the routes open without login, for monitoring."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicom_ai.cache import queries
from dicom_ai.web.deps import WebContext, context

router = APIRouter()


@router.get("/health", tags=["node"])
def health(ctx: WebContext = Depends(context)) -> dict[str, str]:
    """Liveness: the web process answers and the index can be read. With executor "celery" also
    ``broker``: ``up`` or ``down``; ``status`` is then ``degraded`` while it is down (the node
    still receives; jobs wait in the index)."""
    with ctx.sessions() as s:
        queries.ping(s)
    if ctx.broker_up is None:
        return {"status": "ok"}
    up = ctx.broker_up()
    return {"status": "ok" if up else "degraded", "broker": "up" if up else "down"}


@router.get("/metrics", tags=["node"], response_class=Response)
def metrics(ctx: WebContext = Depends(context)) -> Response:
    """Prometheus text exposition format."""
    return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)

"""The worklist (``/``) and study (``/studies/<Study Instance UID>``) pages, for any logged-in
user; an unknown study answers 404."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from dicom_ai.cache.states import JobState
from dicom_ai.web import data
from dicom_ai.web.auth import Identity
from dicom_ai.web.deps import TEMPLATES, WebContext, context, reader
from dicom_ai.web.viewer import PRESETS

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def worklist_page(request: Request, q: str = "", date_from: str = "", date_to: str = "",
                  modality: str = "", status: str = "", sort: str = "received", desc: bool = True,
                  who: Identity = Depends(reader), ctx: WebContext = Depends(context)):
    with ctx.sessions() as s:
        rows = data.worklist(s, q=q, date_from=date_from, date_to=date_to, modality=modality,
                             status=status, sort=sort, desc=desc)
    return TEMPLATES.TemplateResponse(request, "worklist.html", {
        "rows": rows, "user": who, "statuses": data.STATUSES, "refresh": ctx.settings.web.refresh_seconds,
        "f": {"q": q, "date_from": date_from, "date_to": date_to, "modality": modality,
              "status": status, "sort": sort, "desc": desc}})


@router.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False)
def study_page(request: Request, study_uid: str, who: Identity = Depends(reader),
               ctx: WebContext = Depends(context)):
    with ctx.sessions() as s:
        study = data.study_detail(s, study_uid)
    if study is None:
        raise HTTPException(404, "no such study")
    viewable = [j for j in study["jobs"] if j["state"] == JobState.DONE
                and ctx.store.abspath(f"results/{j['id']}/mask.npz").exists()]
    return TEMPLATES.TemplateResponse(request, "study.html", {
        "s": study, "user": who, "viewable": viewable, "presets": list(PRESETS)})

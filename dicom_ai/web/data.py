"""What the pages and the REST API show, read from the index as plain dicts (no PHI leaves
through logs: nothing here logs)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from dicom_ai.cache.db import Delivery, IdentityConflict, Job, Result, Series, Study
from dicom_ai.cache.states import DeliveryState, JobState, ReviewState, SeriesState
from dicom_ai.report.findings import Findings, findings_reasons, findings_text

AWAITING_REVIEW = "awaiting review"
STATUSES = ("waiting for series", JobState.QUEUED, JobState.RUNNING, AWAITING_REVIEW, JobState.DONE,
            JobState.FAILED, DeliveryState.DELIVERED, "delivery failed", "rejected")
ATTENTION = (JobState.FAILED, "delivery failed")


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def job_status(job: Job) -> str:
    """queued, running, failed, awaiting review, rejected (by a reviewer), done, delivered or
    delivery failed."""
    if job.state != JobState.DONE:
        return job.state
    if job.review == ReviewState.AWAITING:
        return AWAITING_REVIEW
    if job.review == ReviewState.REJECTED:
        return "rejected"
    states = [d.state for r in job.results for d in r.deliveries]
    if DeliveryState.FAILED in states:
        return "delivery failed"
    if states and all(s == DeliveryState.DELIVERED for s in states):
        return DeliveryState.DELIVERED
    return JobState.DONE


def findings_attention(findings: dict[str, Any] | None) -> bool:
    """The findings ask for attention: a classification finding (its class is marked so, or it
    is uncertain) or an implausible segmentation result
    (:func:`dicom_ai.report.findings.findings_reasons`)."""
    return Findings.from_json(findings).needs_attention()


def _study_query():
    return select(Study).options(
        selectinload(Study.patient),
        selectinload(Study.series).selectinload(Series.jobs).selectinload(Job.results)
        .selectinload(Result.deliveries),
    )


def worklist_row(study: Study) -> dict[str, Any]:
    """One worklist row: the study and, per model, its latest job's status and findings."""
    models: dict[str, dict[str, Any]] = {}
    for series in study.series:
        for job in series.jobs:
            current = models.get(job.model_name)
            if current is None or job.id > current["job_id"]:
                models[job.model_name] = {
                    "model": f"{job.model_name} {job.model_version}", "job_id": job.id,
                    "status": job_status(job), "findings": job.findings or {},
                    "findings_text": findings_text(job.findings),
                    "attention": findings_attention(job.findings),
                    "attention_reasons": findings_reasons(job.findings),
                }
    receiving = any(s.state == SeriesState.RECEIVING for s in study.series)
    ai = sorted(models.values(), key=lambda m: m["model"])
    statuses = [m["status"] for m in ai] + (["waiting for series"] if receiving else [])
    return {
        "study_uid": study.study_instance_uid,
        "patient_name": study.patient.patient_name.replace("^", " ").strip(),
        "patient_id": study.patient.patient_id,
        "accession_number": study.accession_number,
        "study_date": study.study_date,
        "modalities": sorted({s.modality for s in study.series if s.modality}),
        "description": study.description,
        "n_series": len(study.series),
        "ai": ai,
        "statuses": statuses,
        "attention": any(s in ATTENTION for s in statuses) or any(m["attention"] for m in ai),
        "attention_reasons": [f"{m['model']}: {r}" for m in ai for r in m["attention_reasons"]],
        "first_received_at": _iso(min((s.first_received_at for s in study.series), default=None)),
    }


def _date(value: str) -> str:
    return value.replace("-", "")


def worklist(session: Session, *, q: str = "", date_from: str = "", date_to: str = "",
             modality: str = "", status: str = "", sort: str = "received", desc: bool = True,
             limit: int = 1000) -> list[dict[str, Any]]:
    """Worklist rows, filtered (text in patient name/ID, accession, description; study date
    range YYYYMMDD or YYYY-MM-DD; modality; AI status) and sorted (received, date, patient,
    status)."""
    rows = [worklist_row(s) for s in session.scalars(_study_query()).all()]
    needle = q.strip().lower()
    if needle:
        rows = [r for r in rows if needle in " ".join(
            [r["patient_name"], r["patient_id"], r["accession_number"], r["description"]]).lower()]
    if date_from:
        rows = [r for r in rows if r["study_date"] and r["study_date"] >= _date(date_from)]
    if date_to:
        rows = [r for r in rows if r["study_date"] and r["study_date"] <= _date(date_to)]
    if modality:
        rows = [r for r in rows if modality.upper() in r["modalities"]]
    if status:
        rows = [r for r in rows if status in r["statuses"]]
    key = {
        "date": lambda r: r["study_date"] or "",
        "patient": lambda r: r["patient_name"].lower(),
        "status": lambda r: (r["attention"], ",".join(r["statuses"])),  # attention first when desc
        "received": lambda r: r["first_received_at"] or "",
    }.get(sort, lambda r: r["first_received_at"] or "")
    return sorted(rows, key=key, reverse=desc)[:limit]


def study_detail(session: Session, study_uid: str) -> dict[str, Any] | None:
    """A study with its series, jobs, results, deliveries and timeline; None if unknown."""
    study = session.scalar(_study_query().where(Study.study_instance_uid == study_uid))
    if study is None:
        return None
    out = worklist_row(study)
    out["series"], out["jobs"], timeline = [], [], []
    for s in sorted(study.series, key=lambda s: (s.series_number or 0, s.id)):
        out["series"].append(series_dict(s))
        timeline.append((s.first_received_at, f"series {s.series_number or ''} {s.description!r}: first instance received"))
        if s.completed_at:
            timeline.append((s.completed_at, f"series {s.series_number or ''} complete ({s.completion_signal})"))
        for job in s.jobs:
            out["jobs"].append(job_dict(job))
            timeline.append((job.created_at, f"job {job.id} ({job.model_name}) queued"))
            if job.started_at:
                timeline.append((job.started_at, f"job {job.id} started"))
            if job.finished_at:
                timeline.append((job.finished_at, f"job {job.id} {job.state}" + (f": {job.reason}" if job.reason else "")))
            for review in job.reviews:
                timeline.append((review.at, f"job {job.id} {review.decision}d by {review.who} ({review.role})"
                                            + (f": {review.comment}" if review.comment else "")))
            for r in job.results:
                for d in r.deliveries:
                    when = d.delivered_at or d.next_attempt_at
                    timeline.append((when, f"{r.kind} to {d.destination}: {d.state} after {d.attempts} "
                                           f"attempt(s) ({d.last_status})"))
    out["timeline"] = [{"at": _iso(t), "event": e} for t, e in sorted(timeline, key=lambda x: x[0])]
    return out


def series_dict(s: Series) -> dict[str, Any]:
    return {
        "series_uid": s.series_instance_uid, "series_number": s.series_number,
        "modality": s.modality, "description": s.description, "body_part": s.body_part,
        "n_instances": len(s.instances), "state": s.state, "completion_signal": s.completion_signal,
        "routing": [n for n in s.routing_note.split("; ") if n], "calling_ae_title": s.calling_ae_title,
        "first_received_at": _iso(s.first_received_at), "completed_at": _iso(s.completed_at),
    }


def job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "series_uid": job.series.series_instance_uid, "model": job.model_name,
        "model_version": job.model_version, "rule": job.rule, "priority": job.priority,
        "state": job.state, "status": job_status(job), "reason": job.reason,
        "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at), "timings": job.timings or {},
        "findings": job.findings or {}, "findings_text": findings_text(job.findings),
        "attention": findings_attention(job.findings), "attention_reasons": findings_reasons(job.findings),
        "results": [result_dict(r) for r in job.results],
        "review": job.review,
        "reviews": [{"at": _iso(r.at), "who": r.who, "role": r.role, "decision": r.decision, "comment": r.comment}
                    for r in job.reviews],
    }


def result_dict(r: Result) -> dict[str, Any]:
    return {
        "id": r.id, "kind": r.kind, "sop_class_uid": r.sop_class_uid,
        "sop_instance_uid": r.sop_instance_uid, "series_instance_uid": r.series_instance_uid,
        "deliveries": [delivery_dict(d) for d in r.deliveries],
    }


def delivery_dict(d: Delivery) -> dict[str, Any]:
    return {
        "id": d.id, "destination": d.destination, "state": d.state, "attempts": d.attempts,
        "last_status": d.last_status, "next_attempt_at": _iso(d.next_attempt_at),
        "delivered_at": _iso(d.delivered_at), "result_id": d.result_fk,
    }


def conflict_dict(c: IdentityConflict) -> dict[str, Any]:
    """An instance refused at receive for a patient-identity conflict (which attributes differ,
    never their values)."""
    return {
        "id": c.id, "at": _iso(c.at), "kind": c.kind, "calling_ae_title": c.calling_ae_title,
        "study_instance_uid": c.study_instance_uid, "series_instance_uid": c.series_instance_uid,
        "sop_instance_uid": c.sop_instance_uid, "detail": c.detail,
    }

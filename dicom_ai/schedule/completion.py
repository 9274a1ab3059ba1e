"""Series completeness and job creation (the scheduler's periodic tick).

Signal used here: the idle timer. A series with no new instance for ``[completion]
stable_seconds`` is complete. On completion the series is matched against the enabled models
(:mod:`dicom_ai.schedule.routing`) and one ``queued`` job row is created per model that fires.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Instance, Job, Series, utcnow
from dicom_ai.schedule.routing import RoutableModel, match

log = logging.getLogger(__name__)


def schedule_complete_series(
    sessions: sessionmaker,
    models: list[RoutableModel],
    stable_seconds: float,
    image_sop_classes: set[str],
    now: dt.datetime | None = None,
) -> list[int]:
    """Mark idle ``receiving`` series complete and create their jobs.

    Parameters
    ----------
    stable_seconds:
        A series whose last instance arrived more than this many seconds ago is complete.
    image_sop_classes:
        SOP Class UIDs counted as images (others are ignored for routing).

    Returns
    -------
    list[int]
        Ids of the jobs created.
    """
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=stable_seconds)
    created: list[int] = []
    with sessions.begin() as session:
        ready = session.scalars(
            select(Series).where(Series.state == "receiving", Series.last_received_at <= cutoff)
        ).all()
        for series in ready:
            n_images = session.scalar(
                select(func.count(Instance.id)).where(
                    Instance.series_fk == series.id, Instance.sop_class_uid.in_(image_sop_classes)
                )
            )
            series.state = "complete"
            series.completed_at = now
            series.completion_signal = "stable_seconds"
            notes = []
            for model in models:
                why_not = match(model, series.modality, series.body_part, n_images or 0)
                if why_not:
                    notes.append(f"{model.label}: not run, {why_not}")
                    continue
                pending = session.scalar(
                    select(Job.id).where(
                        Job.series_fk == series.id,
                        Job.model_name == model.manifest.name,
                        Job.model_version == model.manifest.version,
                        Job.state == "queued",
                    )
                )
                if pending:
                    notes.append(f"{model.label}: already queued (job {pending})")
                    continue
                job = Job(
                    series=series,
                    model_name=model.manifest.name,
                    model_version=model.manifest.version,
                    model_path=str(model.path),
                )
                session.add(job)
                session.flush()
                created.append(job.id)
                notes.append(f"{model.label}: queued job {job.id}")
            series.routing_note = "; ".join(notes) or "no model enabled"
            log.info(
                "series %s complete (%d images, signal stable_seconds): %s",
                series.series_instance_uid,
                n_images,
                series.routing_note,
            )
    return created


def recover_after_restart(sessions: sessionmaker) -> int:
    """Requeue jobs left ``running`` by a node that stopped; returns how many."""
    with sessions.begin() as session:
        jobs = session.scalars(select(Job).where(Job.state == "running")).all()
        for job in jobs:
            job.state = "queued"
            job.reason = "requeued after restart"
        return len(jobs)

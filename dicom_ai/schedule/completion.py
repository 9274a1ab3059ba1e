"""Series completeness and job creation (the scheduler's periodic tick).

A ``receiving`` series is complete when the first of these signals fires (the one that fired is
kept in ``completion_signal``):

* ``expected_count``: it holds as many instances as Number of Series Related Instances
  (0020,1209), or else Images in Acquisition (0020,1002), announced;
* ``association_release``: the association that brought it was released (A-RELEASE) at least
  ``release_grace_seconds`` ago, nothing arrived since, every instance came in that one
  association, the Instance Numbers are contiguous and the slices evenly spaced
  (:func:`dicom_ai.schedule.facts.arrived_whole`). A series split over several associations
  never completes this way: the grace lets a next association start, and its instances make
  the series fail the one-association test;
* ``stable_seconds``: no instance arrived for that long (the fallback every other node uses),
  and the association that brought the newest one is no longer open: while it is (its process
  alive, neither released nor aborted), the idle timer waits, at most
  ``open_association_max_seconds`` after that instance, so a sender that stalls mid-series
  does not have part of its series processed.

On completion the series is matched against the routing rules
(:mod:`dicom_ai.schedule.routing`) and one ``queued`` job row is created per model that fires.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_ai.cache.db import Instance, Job, Series, Study, utcnow
from dicom_ai.cache.index import association_process
from dicom_ai.cache.states import JobState, ReviewState, SeriesState
from dicom_ai.config import CompletionSettings
from dicom_ai.lifetime import process_gone
from dicom_ai.schedule.facts import InstanceFacts, SeriesFacts, arrived_whole, summarize
from dicom_ai.schedule.routing import Route, decide

log = logging.getLogger(__name__)


def instance_facts_of(session: Session, series_id: int) -> list[InstanceFacts]:
    """The :class:`InstanceFacts` of a series' instances, from the index."""
    rows = session.execute(
        select(
            Instance.sop_class_uid,
            Instance.instance_number,
            Instance.image_type,
            Instance.orientation,
            Instance.slice_position,
            Instance.slice_thickness,
            Instance.association,
        ).where(Instance.series_fk == series_id)
    ).all()
    return [InstanceFacts(*row) for row in rows]


def series_facts(session: Session, series: Series, image_sop_classes: set[str] | None) -> SeriesFacts:
    """The :class:`SeriesFacts` of an indexed series."""
    return summarize(
        instance_facts_of(session, series.id),
        series_uid=series.series_instance_uid,
        study_uid=series.study.study_instance_uid,
        modality=series.modality,
        body_part=series.body_part,
        description=series.description,
        calling_ae_title=series.calling_ae_title,
        image_sop_classes=image_sop_classes,
    )


def completion_signal(
    session: Session, series: Series, completion: CompletionSettings, now: dt.datetime
) -> str | None:
    """The signal that says ``series`` is complete at ``now``, or None (see the module text)."""
    if completion.use_expected_count and series.expected_instances:
        n = session.scalar(select(func.count(Instance.id)).where(Instance.series_fk == series.id))
        assert n is not None  # count() always has a row
        if n >= series.expected_instances:
            return "expected_count"
    if (
        completion.use_association_release
        and series.released_association
        and series.released_at is not None
        and series.last_received_at <= series.released_at
        and now - series.released_at >= dt.timedelta(seconds=completion.release_grace_seconds)
    ):
        why_not = arrived_whole(instance_facts_of(session, series.id), series.released_association)
        if why_not is None:
            return "association_release"
        log.info("series %s: association release not taken as complete (%s); waiting for "
                 "stable_seconds", series.series_instance_uid, why_not)
        series.released_association = None  # not tested again until another release
        series.released_at = None
    if series.last_received_at <= now - dt.timedelta(seconds=completion.stable_seconds):
        if still_sending(series, completion, now):
            return None
        return "stable_seconds"
    return None


def still_sending(series: Series, completion: CompletionSettings, now: dt.datetime) -> bool:
    """Whether the association that brought ``series``' newest instance may still send more: it
    was neither released nor aborted, its receiving process has not ended
    (:func:`~dicom_ai.lifetime.process_gone`; another host's is taken as alive), and that
    instance arrived less than ``open_association_max_seconds`` ago."""
    name = series.receiving_association
    if not name or now - series.last_received_at >= dt.timedelta(seconds=completion.open_association_max_seconds):
        return False
    receiver = association_process(name)
    return receiver is not None and not process_gone(*receiver)


def schedule_complete_series(
    sessions: sessionmaker,
    routes: list[Route],
    completion: CompletionSettings,
    image_sop_classes: set[str],
    now: dt.datetime | None = None,
    released: list[int] | None = None,
) -> list[int]:
    """Mark complete the ``receiving`` series whose signal fired and create their jobs.

    Parameters
    ----------
    routes:
        Enabled rules with their models (:func:`dicom_ai.schedule.routing.routes`).
    image_sop_classes:
        SOP Class UIDs counted as images (others are ignored for routing).
    released:
        If given, the ids of the series not complete yet whose sending association was
        released with nothing received since (in the release grace) are appended to it.

    Returns
    -------
    list[int]
        Ids of the jobs created.
    """
    now = now or utcnow()
    created: list[int] = []
    with sessions.begin() as session:
        receiving = session.scalars(select(Series).where(Series.state == SeriesState.RECEIVING)).all()
        for series in receiving:
            signal = completion_signal(session, series, completion, now)
            if signal is None:
                if (released is not None and series.released_at is not None
                        and series.last_received_at <= series.released_at):
                    released.append(series.id)
                continue
            series.state = SeriesState.COMPLETE
            series.completed_at = now
            series.completion_signal = signal
            created += _route(session, series, routes, image_sop_classes)
    return created


def _route(session: Session, series: Series, routes: list[Route], image_sop_classes: set[str]) -> list[int]:
    facts = series_facts(session, series, image_sop_classes)
    study: list[SeriesFacts] | None = None
    notes: list[str] = []
    created: list[int] = []
    queued: dict[str, str] = {}  # model label -> rule that queued it in this pass
    for route in routes:
        rule, model = route.rule, route.model
        label = f"{model.label} by rule {rule.name!r}"
        if rule.select != "each" and study is None:
            others = session.scalars(
                select(Series).join(Study).where(
                    Study.id == series.study_fk, Series.id != series.id, Series.state != SeriesState.PURGED
                )
            ).all()
            study = [series_facts(session, s, image_sop_classes) for s in others]
        why_not = decide(rule, facts, study or [])
        if why_not:
            notes.append(f"{label}: not run, {why_not}")
            continue
        if model.label in queued:
            notes.append(f"{label}: already queued by rule {queued[model.label]!r}")
            continue
        pending = session.scalar(
            select(Job.id).where(
                Job.series_fk == series.id,
                Job.model_name == model.manifest.name,
                Job.model_version == model.manifest.version,
                Job.state == JobState.QUEUED,
            )
        )
        if pending:
            notes.append(f"{label}: already queued (job {pending})")
            continue
        job = Job(
            series=series,
            model_name=model.manifest.name,
            model_version=model.manifest.version,
            model_path=str(model.path),
            rule=rule.name,
            priority=rule.priority,
            destinations=rule.destinations,
            review=ReviewState.AWAITING if route.review else ReviewState.NONE,
            queue=rule.queue,
        )
        session.add(job)
        session.flush()
        created.append(job.id)
        queued[model.label] = rule.name
        notes.append(f"{label}: queued job {job.id}")
    series.routing_note = "; ".join(notes) or "no model enabled"
    log.info(
        "series %s complete (%d images, signal %s): %s",
        series.series_instance_uid,
        facts.n_images,
        series.completion_signal,
        series.routing_note,
    )
    return created

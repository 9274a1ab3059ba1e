"""Retention: remove old series from the cache and the index.

Two rules, applied by a periodic scheduler job:

- age: a series whose last instance arrived more than ``[retention] max_age_days`` ago;
- disk: while the disk holding ``data_dir`` is fuller than ``max_disk_percent``, the series
  received longest ago first.

A series is never removed while it is still ``receiving`` (not yet scheduled), has a job
``queued`` or ``running``, a job awaiting a clinician's review, or a result with a ``pending``,
``sending`` or ``held`` delivery. Removing a series deletes its
instance files and rows and its result files; the series row stays with state ``purged`` (and
its jobs and deliveries as history); an instance of it arriving later starts it afresh.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Delivery, Instance, Job, Result, Series, utcnow
from dicom_ai.cache.states import DeliveryState, JobState, ReviewState, SeriesState
from dicom_ai.cache.store import FileStore

log = logging.getLogger(__name__)

DiskUsage = Callable[[Path], "shutil._ntuple_diskusage"]


def _busy(series_id):
    """SQL condition: the series has a job or delivery still to do."""
    pending_job = exists().where(Job.series_fk == series_id, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
    # the reviewer needs the images and results; a delivery still to make needs its file
    in_review = exists().where(Job.series_fk == series_id, Job.review == ReviewState.AWAITING)
    pending_delivery = (
        exists()
        .where(Job.series_fk == series_id, Result.job_fk == Job.id, Delivery.result_fk == Result.id)
        .where(Delivery.state.in_((DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.HELD)))
    )
    return pending_job | in_review | pending_delivery


def removable_series(sessions: sessionmaker, older_than: dt.datetime | None = None) -> list[int]:
    """Ids of series that may be removed, received longest ago first."""
    query = (
        select(Series.id)
        .where(Series.state.notin_((SeriesState.RECEIVING, SeriesState.PURGED)), ~_busy(Series.id))
        .order_by(Series.last_received_at)
    )
    if older_than is not None:
        query = query.where(Series.last_received_at < older_than)
    with sessions() as session:
        return list(session.scalars(query))


def remove_series(sessions: sessionmaker, store: FileStore, series_id: int) -> int:
    """Delete one series' instance files and rows and its result files; returns bytes freed."""
    freed = 0
    with sessions.begin() as session:
        series = session.get(Series, series_id)
        if series is None or session.scalar(select(_busy(series_id))):
            return 0
        paths = [i.path for i in series.instances]
        paths += [r.path for job in series.jobs for r in job.results]
        session.execute(delete(Instance).where(Instance.series_fk == series_id))
        series.state = SeriesState.PURGED
        series.routing_note = f"removed by retention at {utcnow():%Y-%m-%d %H:%M:%S} UTC"
    for rel in paths:  # after the commit: an index row never points at a missing file
        path = store.abspath(rel)
        try:
            freed += path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            pass
    return freed


def apply_retention(
    sessions: sessionmaker,
    store: FileStore,
    *,
    max_age_days: float,
    max_disk_percent: float,
    disk_usage: DiskUsage = shutil.disk_usage,
    now: dt.datetime | None = None,
) -> list[int]:
    """Apply both rules; returns the ids of the series removed (0 in a rule switches it off)."""
    removed: list[int] = []
    if max_age_days > 0:
        cutoff = (now or utcnow()) - dt.timedelta(days=max_age_days)
        for sid in removable_series(sessions, older_than=cutoff):
            remove_series(sessions, store, sid)
            removed.append(sid)
    if 0 < max_disk_percent < 100:
        for sid in removable_series(sessions):
            usage = disk_usage(store.root)
            if 100.0 * usage.used / usage.total <= max_disk_percent:
                break
            remove_series(sessions, store, sid)
            removed.append(sid)
    if removed:
        log.info("retention removed %d series", len(removed))
    return removed

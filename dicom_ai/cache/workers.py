"""The worker registry and job heartbeats: which inference worker runs what, and what to do
when one falls silent.

A worker registers when it starts (:func:`register`) and renews its heartbeat every
``[worker] heartbeat_seconds`` (:func:`heartbeat`), for itself and for the job it is running.
A running job whose heartbeat is older than ``[worker] lost_after_seconds`` was left by a worker
that died, hung or lost the database: :func:`requeue_lost_jobs` puts it back in the queue, once
per lost worker, and fails it after :data:`MAX_ATTEMPTS` claims, so a series that kills its
worker (out of memory, say) cannot take the queue down with it. A worker whose job was taken
back finds out at its final commit (:func:`still_ours`) and keeps nothing of it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Job, Worker, utcnow
from dicom_ai.cache.states import JobState
from dicom_ai.lifetime import process_gone

#: Claims of one job after which a lost worker fails it instead of requeueing it.
MAX_ATTEMPTS = 3


def register(sessions: sessionmaker, name: str, host: str, pid: int, device: str,
             queues: list[str] | None = None) -> None:
    """Record a worker that starts (a row of the same name is replaced)."""
    now = utcnow()
    with sessions.begin() as session:
        row = session.get(Worker, name)
        if row is None:
            row = Worker(name=name)
            session.add(row)
        row.host, row.pid, row.device, row.queues = host, pid, device, list(queues or [])
        row.job_fk, row.started_at, row.heartbeat_at, row.stopped_at = None, now, now, None


def claim_values(worker: str) -> dict:
    """The column values of a job a worker claims (``queued`` to ``running``; attempts + 1)."""
    now = utcnow()
    return {"state": JobState.RUNNING, "started_at": now, "heartbeat_at": now, "attempts": Job.attempts + 1,
            "reason": "", "worker": worker}


def heartbeat(sessions: sessionmaker, name: str, job_id: int | None) -> None:
    """Renew the heartbeat of worker ``name`` and of ``job_id``, the job it runs (None: idle);
    the job's only while it is still running and claimed by ``name``."""
    now = utcnow()
    with sessions.begin() as session:
        session.execute(update(Worker).where(Worker.name == name).values(heartbeat_at=now, job_fk=job_id))
        if job_id is not None:
            session.execute(update(Job).where(Job.id == job_id, Job.worker == name,
                                              Job.state == JobState.RUNNING).values(heartbeat_at=now))


def stopped(sessions: sessionmaker, name: str) -> None:
    """Record that worker ``name`` stopped cleanly."""
    with sessions.begin() as session:
        session.execute(update(Worker).where(Worker.name == name).values(stopped_at=utcnow(), job_fk=None))


def still_ours(job: Job, name: str) -> bool:
    """Whether ``job`` (read in the transaction that commits its results, which must commit
    nothing when it is not) is still running under worker ``name``. ``name`` "" (a runner
    outside any worker, in tests and ``models test``) checks the state only."""
    return job.state == JobState.RUNNING and (not name or job.worker == name)


def _requeue(jobs: list[Job], why: str) -> list[int]:
    for job in jobs:
        if job.attempts >= MAX_ATTEMPTS:
            job.state = JobState.FAILED
            job.reason = f"{why}; failed after {job.attempts} attempts"[:2000]
            job.finished_at = utcnow()
        else:
            job.state = JobState.QUEUED
            job.reason = f"requeued: {why}"[:2000]
        job.heartbeat_at = None
        job.dispatched_at = None  # executor "celery": to be sent to the broker again
    return [j.id for j in jobs]


def requeue_lost_jobs(sessions: sessionmaker, lost_after_seconds: float, now: dt.datetime | None = None) -> list[int]:
    """Requeue (or, after :data:`MAX_ATTEMPTS`, fail) the running jobs with no heartbeat for
    ``lost_after_seconds``; returns their ids."""
    now = now or utcnow()
    horizon = now - dt.timedelta(seconds=lost_after_seconds)
    with sessions.begin() as session:
        jobs = list(session.scalars(
            select(Job).where(Job.state == JobState.RUNNING,
                              func.coalesce(Job.heartbeat_at, Job.started_at) < horizon)
            .with_for_update(skip_locked=True)))
        return [i for job in jobs
                for i in _requeue([job], f"worker {job.worker or '?'} sent no heartbeat for {lost_after_seconds:.0f} s")]


def requeue_jobs_of_ended_workers(sessions: sessionmaker) -> list[int]:
    """At a node's start: requeue (or fail, see :func:`requeue_lost_jobs`) the running jobs
    whose worker was a process of this host that has ended (:func:`~dicom_ai.lifetime.process_gone`:
    the node's own worker ends with the node), or that name no worker; returns their ids. The
    job of a worker on another host, or of one alive here, is left to its heartbeat."""
    with sessions.begin() as session:
        rows = session.execute(
            select(Job, Worker.host, Worker.pid).outerjoin(Worker, Worker.name == Job.worker)
            .where(Job.state == JobState.RUNNING).with_for_update(skip_locked=True, of=Job)).all()
        jobs = [job for job, host, pid in rows if not job.worker or (host is not None and process_gone(host, pid))]
        return _requeue(jobs, "its worker ended (the node restarted)")


def requeue_jobs_of(sessions: sessionmaker, name: str, why: str) -> list[int]:
    """Requeue (or fail, see :func:`requeue_lost_jobs`) the running jobs of worker ``name``,
    known to be gone (``why``); returns their ids."""
    with sessions.begin() as session:
        jobs = list(session.scalars(select(Job).where(Job.state == JobState.RUNNING, Job.worker == name)))
        return _requeue(jobs, f"worker {name} {why}")


@dataclass(frozen=True)
class WorkerView:
    """A worker as ``workers list``, the admin page and /metrics show it. ``state``: ``busy``
    (running ``job_id``), ``idle``, ``lost`` (no heartbeat for ``[worker] lost_after_seconds``)
    or ``stopped``; ``heartbeat_age`` in s."""

    name: str
    host: str
    pid: int
    device: str
    queues: list[str]
    state: str
    job_id: int | None
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    heartbeat_age: float


def workers(sessions: sessionmaker, lost_after_seconds: float, now: dt.datetime | None = None) -> list[WorkerView]:
    """Every registered worker, the live ones first, then by host and name."""
    now = now or utcnow()
    with sessions() as session:
        rows = list(session.scalars(select(Worker)))
    out = []
    for w in rows:
        age = (now - w.heartbeat_at).total_seconds()
        if w.stopped_at is not None:
            state = "stopped"
        elif age > lost_after_seconds:
            state = "lost"
        else:
            state = "busy" if w.job_fk is not None else "idle"
        out.append(WorkerView(w.name, w.host, w.pid, w.device, list(w.queues or []), state,
                              w.job_fk if state == "busy" else None, w.started_at, w.heartbeat_at, age))
    rank = {"busy": 0, "idle": 0, "lost": 1, "stopped": 2}
    return sorted(out, key=lambda v: (rank[v.state], v.host, v.name))

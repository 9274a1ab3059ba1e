"""Handing jobs to inference workers on other hosts through Celery (``[node] executor =
"celery"``), with a Redis broker (``[celery] broker_url``).

The index stays the source of truth. The scheduler commits a ``queued`` job row first; the
node then sends only the job's id to the queue the job names (:func:`dispatch_queued`), and
records when (``dispatched_at``). A worker (``dicom-ai worker``) claims the row in the index
before it runs it (:func:`claim_job`): a task whose job is no longer queued (sent twice, or
done already) does nothing, so each job runs once however often its id is delivered.

Settings that make long GPU tasks safe (Celery's "Tasks" and "Workers" guides):

* ``task_acks_late`` with ``task_reject_on_worker_lost``: a task is acknowledged after the job,
  so a worker that dies mid-job leaves it unacknowledged for the broker to deliver again;
* ``worker_prefetch_multiplier = 1`` and one process per worker: a worker holds one job;
* Redis' ``visibility_timeout`` (``[celery] visibility_timeout_seconds``) longer than the
  longest job, so a job still running is not given to a second worker;
* the index heartbeat (:mod:`dicom_ai.cache.workers`): a job whose worker fell silent is
  requeued by the node and sent again, long before the visibility timeout.

A broker that cannot be reached leaves the jobs undispatched: the node keeps receiving, the
outage shows in ``/health`` and ``/metrics`` (``dicom_ai_broker_up``), and the next tick sends
them once the broker is back.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Job, utcnow
from dicom_ai.cache.states import JobState
from dicom_ai.cache.workers import claim_values
from dicom_ai.config import Settings

log = logging.getLogger(__name__)

#: Name of the Celery task that runs one job (its only argument: the job id).
TASK = "dicom_ai.run_job"
#: Seconds the node waits for the broker when it sends a job or checks it is there.
BROKER_TIMEOUT = 2.0


def celery_app(settings: Settings) -> Any:
    """The Celery application of the node (sending) and of ``dicom-ai worker`` (running)."""
    from celery import Celery  # deferred: only with executor "celery" (an optional dependency)

    app = Celery("dicom_ai", broker=settings.celery.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_default_queue=settings.celery.default_queue,
        task_ignore_result=True,  # results live in the index
        broker_transport_options={
            "visibility_timeout": settings.celery.visibility_timeout_seconds,
            "socket_connect_timeout": BROKER_TIMEOUT,
            "socket_timeout": BROKER_TIMEOUT * 5,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for the broker to come back
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def broker_up(app: Any) -> bool:
    """Whether the broker answers within :data:`BROKER_TIMEOUT` s."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT)
        return True
    except Exception:  # noqa: BLE001 - any failure means not reachable now
        return False


def dispatch_queued(sessions: sessionmaker, app: Any, default_queue: str) -> list[int]:
    """Send the id of every queued job not yet sent (highest priority, then oldest) to its
    queue (``default_queue`` when it names none), and record when; returns the ids sent.

    Raises
    ------
    kombu.exceptions.OperationalError
        If the broker cannot be reached (the jobs not sent stay undispatched).
    """
    with sessions() as session:
        due = session.execute(
            select(Job.id, Job.queue).where(Job.state == JobState.QUEUED, Job.dispatched_at.is_(None))
            .order_by(Job.priority.desc(), Job.id)
        ).all()
    sent: list[int] = []
    for job_id, queue in due:
        # sent before it is marked: a crash in between sends it twice, and the second task finds
        # the job claimed already (claim_job)
        app.send_task(TASK, args=[job_id], queue=queue or default_queue, retry=False)
        with sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id, Job.dispatched_at.is_(None))
                            .values(dispatched_at=utcnow()))
        sent.append(job_id)
    return sent


def claim_job(sessions: sessionmaker, job_id: int, worker: str) -> bool:
    """Move job ``job_id`` from ``queued`` to ``running`` under ``worker``; False when it is not
    queued (claimed already, done, or gone): the task then has nothing to do."""
    with sessions.begin() as session:
        claimed = session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED).values(**claim_values(worker))
        ).rowcount
    return bool(claimed)

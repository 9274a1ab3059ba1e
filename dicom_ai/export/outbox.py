"""The outbox: delivery rows worked by a periodic tick, retried with backoff until a horizon.

Each (result, destination) pair is a ``deliveries`` row. A due ``pending`` row is set
to ``sending`` and committed, then sent; success (C-STORE 0x0000 or a 0xB000 warning, STOW-RS
stored, file written) makes it ``delivered``. A failure keeps the status and its meaning and
schedules the next attempt after ``retry_initial_seconds * 2**(attempts-1)`` (at most
``retry_max_seconds``); when that would fall after ``horizon_hours`` from the first try (or the
last resend) the row becomes ``failed``: a dead letter, listed by ``dicom-ai deliveries list``
and sent again by ``dicom-ai deliveries resend``.

Exactly once: a row left ``sending`` by a node process that ended (it names the host and
process that claimed it) may or may not have arrived. It is checked at the destination first
(C-FIND IMAGE level, QIDO-RS, or the file) and counted delivered if there; otherwise it is sent
again, and since result SOP Instance UIDs are deterministic a destination that did get it sees
the same instance again, not a second one. Nodes sharing one index leave each other's
transfers alone: a row claimed on another host is settled only once it has been ``sending``
for ``[delivery] sending_lost_after_seconds``.

Sending, looking up and checking are the business of each destination kind's handler
(:mod:`dicom_ai.export.destinations`); the outbox only groups, records and retries.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os

import pydicom
import pydicom.errors
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_ai.cache.db import Delivery, Job, Result, utcnow
from dicom_ai.cache.states import DeliveryState, JobState, ResultKind, ReviewState
from dicom_ai.cache.store import FileStore
from dicom_ai.config import Destination, Settings
from dicom_ai.export.destinations import handler_for
from dicom_ai.lifetime import process_gone, this_host

log = logging.getLogger(__name__)


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Delay before attempt ``attempts + 1`` (exponential, capped), s."""
    return min(initial * (2 ** max(attempts - 1, 0)), maximum)


def recover_deliveries(sessions: sessionmaker, settings: Settings) -> tuple[int, int]:
    """Settle rows left ``sending`` by a node process that stopped mid-transfer: one of this
    host that has ended (:func:`~dicom_ai.lifetime.process_gone`), one that named no sender,
    or one claimed more than ``[delivery] sending_lost_after_seconds`` ago.

    Each is looked up at its destination: found -> ``delivered``; not found or cannot tell ->
    ``pending``, due now. Returns (found, requeued).
    """
    found = requeued = 0
    lost_before = utcnow() - dt.timedelta(seconds=settings.delivery.sending_lost_after_seconds)
    with sessions() as session:
        sending = session.execute(select(Delivery.id, Delivery.claimed_host, Delivery.claimed_pid, Delivery.claimed_at)
                                  .where(Delivery.state == DeliveryState.SENDING)).all()
        left = [i for i, host, pid, at in sending
                if not host or at is None or at < lost_before or process_gone(host, pid)]
        if not left:
            return 0, 0
        # locked, so two nodes settling at once look each row up once (PostgreSQL)
        rows = session.scalars(select(Delivery).where(Delivery.id.in_(left), Delivery.state == DeliveryState.SENDING)
                               .order_by(Delivery.id).with_for_update(skip_locked=True)).all()
        for row in rows:
            dest = settings.destination(row.destination)
            there = handler_for(dest, settings).arrived(row.result) if dest is not None else None
            if there:
                row.state, row.delivered_at = DeliveryState.DELIVERED, utcnow()
                row.last_status = "found at the destination after a restart"
                found += 1
            else:
                row.state, row.next_attempt_at = DeliveryState.PENDING, utcnow()
                row.last_status = ("not at the destination after a restart; sending again"
                                   if there is False else "unknown after a restart; sending again")
                requeued += 1
            log.info("delivery %d of %s to %s: %s", row.id, row.result.sop_instance_uid,
                     row.destination, row.last_status)
        session.commit()
    return found, requeued


def deliver_due(sessions: sessionmaker, store: FileStore, settings: Settings) -> int:
    """Send every due pending delivery, one association (or request) per destination and
    sender; returns how many were delivered.

    The due rows are claimed (``pending`` to ``sending``) by one UPDATE before anything is
    sent, so outboxes running at the same time never send the same delivery: on PostgreSQL the
    rows are picked ``FOR UPDATE SKIP LOCKED`` (each outbox takes rows no other holds), and
    SQLite runs one writing statement at a time."""
    now = utcnow()
    done = 0
    with sessions() as session:
        due = (
            select(Delivery.id)
            .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
            .order_by(Delivery.id)
            .with_for_update(skip_locked=True)
        )
        claimed = session.scalars(
            update(Delivery).where(Delivery.id.in_(due.scalar_subquery()), Delivery.state == DeliveryState.PENDING)
            .values(state=DeliveryState.SENDING, claimed_host=this_host(), claimed_pid=os.getpid(), claimed_at=now)
            .returning(Delivery.id)
            .execution_options(synchronize_session=False)
        ).all()
        session.commit()  # from here a restart checks the destination before resending
        groups: dict[tuple[str, str], list[Delivery]] = {}
        for row in session.scalars(select(Delivery).where(Delivery.id.in_(claimed)).order_by(Delivery.id)):
            groups.setdefault((row.destination, row.result.job.series.calling_ae_title), []).append(row)
        for (name, calling), rows in groups.items():
            dest = settings.destination(name)
            files = {store.abspath(r.result.path): r for r in rows}
            if dest is None:
                outcome = {f: (False, f"destination {name!r} is no longer configured") for f in files}
            else:
                outcome = handler_for(dest, settings).send(
                    {f: r.result.sop_instance_uid for f, r in files.items()}, calling)
            for f, (ok, message) in outcome.items():
                done += _record(files[f], ok, message, settings)
            session.commit()
    return done


def _record(row: Delivery, ok: bool, message: str, settings: Settings) -> int:
    row.attempts += 1
    row.last_status = message[:256]
    what = f"{row.result.kind} {row.result.sop_instance_uid} to {row.destination}"
    if ok:
        row.state, row.delivered_at = DeliveryState.DELIVERED, utcnow()
        log.info("delivered %s (%s)", what, message)
        return 1
    d = settings.delivery
    delay = backoff_seconds(row.attempts, d.retry_initial_seconds, d.retry_max_seconds)
    retry_at = utcnow() + dt.timedelta(seconds=delay)
    if retry_at > row.retry_since + dt.timedelta(hours=d.horizon_hours):
        row.state = DeliveryState.FAILED
        log.error("delivery %d of %s is a dead letter after %d attempts over %.3g h: %s "
                  "(dicom-ai deliveries resend %d)", row.id, what, row.attempts, d.horizon_hours,
                  message, row.id)
    else:
        row.state, row.next_attempt_at = DeliveryState.PENDING, retry_at
        log.warning("delivery of %s failed (attempt %d, retry in %.0f s): %s", what, row.attempts,
                    delay, message)
    return 0


def resend(sessions: sessionmaker, ids: list[int] | None = None, *, failed: bool = False) -> int:
    """Make deliveries due now again, with a new horizon: the ``ids`` given, and with
    ``failed`` every dead letter. Returns how many."""
    stmt = update(Delivery).where(Delivery.state.in_((DeliveryState.FAILED, DeliveryState.PENDING, DeliveryState.DELIVERED)))
    if ids:
        stmt = stmt.where(Delivery.id.in_(ids))
    elif failed:
        stmt = stmt.where(Delivery.state == DeliveryState.FAILED)
    else:
        return 0
    now = utcnow()
    with sessions.begin() as session:
        return session.execute(
            stmt.values(state=DeliveryState.PENDING, next_attempt_at=now, retry_since=now)
            .execution_options(synchronize_session=False)
        ).rowcount


def check_destination(dest: Destination, settings: Settings, calling_ae_title: str = "") -> str:
    """Verify that a destination answers: C-ECHO, a QIDO-RS query, or a writable folder.

    Parameters
    ----------
    dest:
        The destination.
    settings:
        The node's settings.
    calling_ae_title:
        For a ``return`` destination: the AE title of the peer to check.

    Returns
    -------
    str
        What answered (``C-ECHO AE@host:port: 0x0000 Success``, ``QIDO-RS <url>: HTTP 200``,
        ``folder <path> is writable``).

    Raises
    ------
    ConnectionError
        If the destination does not answer or answers with a failure.
    OSError
        If a folder cannot be created or written.
    """
    return handler_for(dest, settings).check(calling_ae_title)


def create_deliveries(session: Session, result: Result, settings: Settings,
                      destinations: list[str] | None = None) -> None:
    """Add one delivery per destination (``destinations`` names, None: all) whose ``results``
    list the result's kind (``seg``, ``sr``, ``sc``): ``pending``, or ``held`` when the job
    awaits a clinician's review (:mod:`dicom_ai.export.review` releases or rejects them)."""
    held = result.job is not None and result.job.review == ReviewState.AWAITING
    for dest in settings.destinations:
        if (destinations is None or dest.name in destinations) and result.kind.lower() in dest.results:
            session.add(Delivery(result=result, destination=dest.name,
                                 state=DeliveryState.HELD if held else DeliveryState.PENDING,
                                 last_status="awaiting review" if held else ""))


def withdraw_superseded(session: Session, job: Job, store: FileStore, settings: Settings,
                        manifest=None) -> list[Result]:
    """Withdraw what ``job``'s results replace, in the transaction that records (or, after a
    clinician's review, releases) them.

    The results replaced are those of the newest earlier ``done`` job of the same model (by
    name) on the same series whose SOP Instance UIDs the new results do not reuse (a reused
    UID overwrites the object at the destination; see :mod:`dicom_ai.report.uids`).

    * A delivery of them not yet made (``pending`` or ``held``) is never made: it becomes
      ``superseded``.
    * Every destination that received them gets a rejection note (:func:`withdraw`).

    Parameters
    ----------
    session:
        The open transaction in which ``job``'s own results were added (flushed here).
    manifest:
        The model's :class:`~dicom_ai.package.manifest.ModelManifest`, for the notes' identity.

    Returns
    -------
    list[Result]
        The rejection notes added, as results of ``job``.
    """
    session.flush()
    new_uids = {r.sop_instance_uid for r in job.results}
    previous = session.scalars(
        select(Job).where(Job.series_fk == job.series_fk, Job.model_name == job.model_name, Job.id < job.id,
                          Job.state == JobState.DONE).order_by(Job.id.desc()).limit(1)).first()
    if previous is None:
        return []
    replaced = [r for r in previous.results if r.kind != ResultKind.KOS and r.sop_instance_uid not in new_uids]
    return withdraw(session, job, replaced, store, settings, manifest, not_sent=DeliveryState.SUPERSEDED,
                    description=f"Replaced by a newer run of {job.model_name} {job.model_version} on this series",
                    why=f"superseded by job {job.id} before it was sent")


def withdraw(session: Session, owner: Job, results: list[Result], store: FileStore, settings: Settings,
             manifest=None, *, not_sent: str, description: str, why: str) -> list[Result]:
    """Withdraw ``results`` from wherever they went, in the caller's transaction.

    * Their deliveries not yet made (``pending``, ``held``) become ``not_sent`` (``superseded``
      or ``rejected``), with ``why`` as their status, and are never made.
    * Every destination that received them (``delivered``, or ``sending``: they may have
      arrived) gets an IHE IOCM rejection note (:func:`dicom_ai.report.kos.build_rejection_note`,
      (113001, DCM, "Rejected for Quality Reasons"), Key Object Description ``description``)
      listing exactly the instances it got, as a ``KOS`` result of ``owner`` with a delivery
      to that destination, sent through the outbox like any result.

    Returns
    -------
    list[Result]
        The notes added (one per distinct set of withdrawn instances).
    """
    from dicom_ai.report.kos import build_rejection_note  # deferred: start-up time (highdicom)

    received: dict[str, list[Result]] = {}
    for result in results:
        for d in result.deliveries:
            if d.state in (DeliveryState.PENDING, DeliveryState.HELD):
                d.state, d.last_status = not_sent, why
            elif d.state in (DeliveryState.DELIVERED, DeliveryState.SENDING):
                received.setdefault(d.destination, []).append(result)
    by_set: dict[tuple[int, ...], list[str]] = {}
    rows = {r.id: r for listed in received.values() for r in listed}
    for destination, listed in received.items():
        by_set.setdefault(tuple(sorted(r.id for r in listed)), []).append(destination)
    done = len([r for r in owner.results if r.kind == ResultKind.KOS])
    notes = []
    for number, (ids, destinations) in enumerate(sorted(by_set.items()), start=done + 1):
        headers = []
        for r in (rows[i] for i in ids):
            try:
                headers.append(pydicom.dcmread(store.abspath(r.path), stop_before_pixels=True))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                log.warning("job %d: %s %s cannot be withdrawn, its file is unreadable: %s", owner.id, r.kind,
                            r.sop_instance_uid, exc)
        if not headers:
            continue
        note = build_rejection_note(headers, device_serial_number=settings.node.ae_title, manifest=manifest,
                                    description=description)
        buf = io.BytesIO()
        note.save_as(buf, enforce_file_format=True)
        rel = store.result_relpath(owner.id, ResultKind.KOS, number)
        store.write(rel, buf.getbuffer())
        row = Result(job=owner, kind=ResultKind.KOS, sop_class_uid=str(note.SOPClassUID),
                     sop_instance_uid=str(note.SOPInstanceUID), series_instance_uid=str(note.SeriesInstanceUID),
                     path=rel)
        session.add(row)
        for destination in destinations:
            session.add(Delivery(result=row, destination=destination))
        log.info("job %d: rejection note %s withdraws %d instances from %s", owner.id, note.SOPInstanceUID,
                 len(headers), ", ".join(destinations))
        notes.append(row)
    return notes

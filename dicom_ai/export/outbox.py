"""The outbox: delivery rows worked by a periodic tick, retried with backoff until a horizon.

Each (result, destination) pair is a ``deliveries`` row (issue 5). A due ``pending`` row is set
to ``sending`` and committed, then sent; success (C-STORE 0x0000 or a 0xB000 warning, STOW-RS
stored, file written) makes it ``delivered``. A failure keeps the status and its meaning and
schedules the next attempt after ``retry_initial_seconds * 2**(attempts-1)`` (at most
``retry_max_seconds``); when that would fall after ``horizon_hours`` from the first try (or the
last resend) the row becomes ``failed``: a dead letter, listed by ``dicom-ai deliveries list``
and sent again by ``dicom-ai deliveries resend``.

Exactly once: a row found ``sending`` at start-up may or may not have arrived. It is checked at
the destination first (C-FIND IMAGE level, QIDO-RS, or the file) and counted delivered if
there; otherwise it is sent again, and since result SOP Instance UIDs are deterministic a
destination that did get it sees the same instance again, not a second one.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_ai.cache.db import Delivery, Result, utcnow
from dicom_ai.cache.store import FileStore, atomic_copy
from dicom_ai.config import Destination, Settings
from dicom_ai.export import scu, stow

log = logging.getLogger(__name__)

# (host, port, called AE title) of a DICOM destination, or a reason it has none
Target = tuple[str, int, str]


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Delay before attempt ``attempts + 1`` (exponential, capped), s."""
    return min(initial * (2 ** max(attempts - 1, 0)), maximum)


def dicom_target(dest: Destination, settings: Settings, calling_ae_title: str) -> Target | str:
    """Where a ``dicom`` or ``return`` destination sends, or why it cannot."""
    if dest.kind == "dicom":
        return dest.host, dest.port, dest.ae_title
    peer = next((p for p in settings.peers if p.ae_title == calling_ae_title), None)
    if peer is None:
        return f"return to sender: calling AE title {calling_ae_title!r} is not in [[peers]]"
    if peer.port is None or peer.host == "*" or "/" in peer.host:
        return (f"return to sender: [[peers]] {peer.ae_title} needs a single host address and a "
                "port to be sent results")
    return peer.host, peer.port, peer.ae_title


def _send(dest: Destination, settings: Settings, files: dict[Path, str],
          calling_ae_title: str) -> dict[Path, tuple[bool, str]]:
    """Send ``files`` (path -> SOP Instance UID) to one destination; (ok, message) each."""
    if dest.kind == "folder":
        out = {}
        for f, sop_uid in files.items():
            try:
                atomic_copy(f, Path(dest.path) / f"{sop_uid}.dcm")
                out[f] = (True, "copied")
            except OSError as exc:
                out[f] = (False, f"copy failed: {exc}")
        return out
    if dest.kind == "stow":
        try:
            return stow.stow(dest.url, files, username=dest.username, password=dest.password,
                             timeout=dest.timeout_seconds)
        except stow.DicomWebError as exc:
            return {f: (False, str(exc)) for f in files}
    target = dicom_target(dest, settings, calling_ae_title)
    if isinstance(target, str):
        return {f: (False, target) for f in files}
    host, port, aec = target
    try:
        outcomes = scu.store_files(list(files), host, port, aet=settings.node.ae_title, aec=aec,
                                   timeout=dest.timeout_seconds)
    except scu.AssociationFailed as exc:
        return {f: (False, str(exc)) for f in files}
    got = {o.path: (o.ok, o.message) for o in outcomes}
    return {f: got.get(f, (False, "not sent (association ended)")) for f in files}


def _arrived(dest: Destination, settings: Settings, row: Delivery) -> bool | None:
    """Whether a delivery's object is at its destination; None when that cannot be asked."""
    result = row.result
    if dest.kind == "folder":
        return (Path(dest.path) / f"{result.sop_instance_uid}.dcm").is_file()
    if dest.kind == "stow":
        return stow.has_instance(dest.url, result.sop_instance_uid, username=dest.username,
                                 password=dest.password, timeout=dest.timeout_seconds)
    series = result.job.series
    target = dicom_target(dest, settings, series.calling_ae_title)
    if isinstance(target, str):
        return None
    host, port, aec = target
    return scu.has_instance(host, port, aet=settings.node.ae_title, aec=aec,
                            study_uid=series.study.study_instance_uid,
                            series_uid=result.series_instance_uid, sop_uid=result.sop_instance_uid,
                            timeout=dest.timeout_seconds)


def recover_deliveries(sessions: sessionmaker, settings: Settings) -> tuple[int, int]:
    """At start-up: settle rows left ``sending`` by a node that stopped mid-transfer.

    Each is looked up at its destination: found -> ``delivered``; not found or cannot tell ->
    ``pending``, due now. Returns (found, requeued).
    """
    found = requeued = 0
    with sessions() as session:
        rows = session.scalars(select(Delivery).where(Delivery.state == "sending")).all()
        for row in rows:
            dest = settings.destination(row.destination)
            there = _arrived(dest, settings, row) if dest is not None else None
            if there:
                row.state, row.delivered_at = "delivered", utcnow()
                row.last_status = "found at the destination after a restart"
                found += 1
            else:
                row.state, row.next_attempt_at = "pending", utcnow()
                row.last_status = ("not at the destination after a restart; sending again"
                                   if there is False else "unknown after a restart; sending again")
                requeued += 1
            log.info("delivery %d of %s to %s: %s", row.id, row.result.sop_instance_uid,
                     row.destination, row.last_status)
        session.commit()
    return found, requeued


def deliver_due(sessions: sessionmaker, store: FileStore, settings: Settings) -> int:
    """Send every due pending delivery, one association (or request) per destination and
    sender; returns how many were delivered."""
    now = utcnow()
    done = 0
    with sessions() as session:
        due = session.scalars(
            select(Delivery)
            .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
            .order_by(Delivery.id)
        ).all()
        groups: dict[tuple[str, str], list[Delivery]] = {}
        for row in due:
            groups.setdefault((row.destination, row.result.job.series.calling_ae_title), []).append(row)
        for (name, calling), rows in groups.items():
            for row in rows:
                row.state = "sending"
            session.commit()  # from here a restart checks the destination before resending
            dest = settings.destination(name)
            files = {store.abspath(r.result.path): r for r in rows}
            if dest is None:
                outcome = {f: (False, f"destination {name!r} is no longer configured") for f in files}
            else:
                outcome = _send(dest, settings, {f: r.result.sop_instance_uid for f, r in files.items()},
                                calling)
            for f, (ok, message) in outcome.items():
                done += _record(files[f], ok, message, settings)
            session.commit()
    return done


def _record(row: Delivery, ok: bool, message: str, settings: Settings) -> int:
    row.attempts += 1
    row.last_status = message[:256]
    what = f"{row.result.kind} {row.result.sop_instance_uid} to {row.destination}"
    if ok:
        row.state, row.delivered_at = "delivered", utcnow()
        log.info("delivered %s (%s)", what, message)
        return 1
    d = settings.delivery
    delay = backoff_seconds(row.attempts, d.retry_initial_seconds, d.retry_max_seconds)
    retry_at = utcnow() + dt.timedelta(seconds=delay)
    if retry_at > row.retry_since + dt.timedelta(hours=d.horizon_hours):
        row.state = "failed"
        log.error("delivery %d of %s is a dead letter after %d attempts over %.3g h: %s "
                  "(dicom-ai deliveries resend %d)", row.id, what, row.attempts, d.horizon_hours,
                  message, row.id)
    else:
        row.state, row.next_attempt_at = "pending", retry_at
        log.warning("delivery of %s failed (attempt %d, retry in %.0f s): %s", what, row.attempts,
                    delay, message)
    return 0


def resend(sessions: sessionmaker, ids: list[int] | None = None, *, failed: bool = False) -> int:
    """Make deliveries due now again, with a new horizon: the ``ids`` given, and with
    ``failed`` every dead letter. Returns how many."""
    stmt = update(Delivery).where(Delivery.state.in_(("failed", "pending", "delivered")))
    if ids:
        stmt = stmt.where(Delivery.id.in_(ids))
    elif failed:
        stmt = stmt.where(Delivery.state == "failed")
    else:
        return 0
    now = utcnow()
    with sessions.begin() as session:
        return session.execute(
            stmt.values(state="pending", next_attempt_at=now, retry_since=now)
            .execution_options(synchronize_session=False)
        ).rowcount


def check_destination(dest: Destination, settings: Settings, calling_ae_title: str = "") -> str:
    """Verify that a destination answers: C-ECHO, a QIDO-RS query, or a writable folder.

    Returns what answered; raises ``ConnectionError`` (or ``OSError``) saying why not.
    """
    if dest.kind == "folder":
        path = Path(dest.path)
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".dicom-ai-check"
        probe.write_bytes(b"")
        probe.unlink()
        return f"folder {path} is writable"
    if dest.kind == "stow":
        return f"QIDO-RS {dest.url}: {stow.check(dest.url, username=dest.username, password=dest.password)}"
    target = dicom_target(dest, settings, calling_ae_title)
    if isinstance(target, str):
        raise ConnectionError(target)
    host, port, aec = target
    status = scu.echo(host, port, aet=settings.node.ae_title, aec=aec, timeout=dest.timeout_seconds)
    if status != 0:
        raise ConnectionError(f"C-ECHO {aec}@{host}:{port}: {scu.status_meaning(status)}")
    return f"C-ECHO {aec}@{host}:{port}: 0x0000 Success"


def create_deliveries(session: Session, result: Result, settings: Settings,
                      destinations: list[str] | None = None) -> None:
    """Add one pending delivery per destination (``destinations`` names, None: all)."""
    for dest in settings.destinations:
        if destinations is None or dest.name in destinations:
            session.add(Delivery(result=result, destination=dest.name))

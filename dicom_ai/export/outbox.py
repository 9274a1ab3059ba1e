"""The outbox: delivery rows worked by a periodic tick, retried with backoff.

Each (result, destination) pair is a ``deliveries`` row. A due ``pending`` row is sent; success
(0x0000 or a 0xB000 warning) makes it ``delivered``; a failure schedules the next attempt after
``retry_initial_seconds * 2**(attempts-1)`` (at most ``retry_max_seconds``) and after
``max_attempts`` the row becomes ``failed`` with the last status kept for the admin.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Delivery, Result, utcnow
from dicom_ai.cache.store import FileStore, atomic_copy
from dicom_ai.config import Destination, Settings
from dicom_ai.export.scu import AssociationFailed, store_files

log = logging.getLogger(__name__)


def backoff_seconds(attempts: int, initial: float, maximum: float) -> float:
    """Delay before attempt ``attempts + 1`` (exponential, capped)."""
    return min(initial * (2 ** max(attempts - 1, 0)), maximum)


def _send(
    dest: Destination, settings: Settings, files: dict[Path, str]
) -> dict[Path, tuple[bool, str]]:
    """Send ``files`` (path -> SOP Instance UID) to one destination; returns (ok, message) each."""
    if dest.kind == "folder":
        out = {}
        for f, sop_uid in files.items():
            try:
                atomic_copy(f, Path(dest.path) / f"{sop_uid}.dcm")
                out[f] = (True, "copied")
            except OSError as exc:
                out[f] = (False, f"copy failed: {exc}")
        return out
    try:
        outcomes = store_files(
            files, dest.host, dest.port, aet=settings.node.ae_title, aec=dest.ae_title
        )
    except AssociationFailed as exc:
        return {f: (False, str(exc)) for f in files}
    got = {o.path: (o.ok, o.message) for o in outcomes}
    return {f: got.get(f, (False, "not sent")) for f in files}


def deliver_due(sessions: sessionmaker, store: FileStore, settings: Settings) -> int:
    """Send every due pending delivery, one association per destination; returns how many."""
    now = utcnow()
    with sessions() as session:
        due = session.scalars(
            select(Delivery)
            .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
            .order_by(Delivery.id)
        ).all()
        by_dest: dict[str, list[Delivery]] = {}
        for d in due:
            by_dest.setdefault(d.destination, []).append(d)
        destinations = {d.name: d for d in settings.destinations}
        done = 0
        for name, rows in by_dest.items():
            dest = destinations.get(name)
            files = {store.abspath(r.result.path): r for r in rows}
            if dest is None:
                results = {f: (False, f"destination {name!r} is no longer configured") for f in files}
            else:
                results = _send(
                    dest, settings, {f: r.result.sop_instance_uid for f, r in files.items()}
                )
            for f, (ok, message) in results.items():
                row = files[f]
                row.attempts += 1
                row.last_status = message[:128]
                if ok:
                    row.state = "delivered"
                    row.delivered_at = utcnow()
                    done += 1
                    log.info("delivered %s %s to %s", row.result.kind, row.result.sop_instance_uid, name)
                elif row.attempts >= settings.delivery.max_attempts:
                    row.state = "failed"
                    log.error(
                        "delivery of %s to %s failed after %d attempts: %s",
                        row.result.sop_instance_uid, name, row.attempts, message,
                    )
                else:
                    delay = backoff_seconds(
                        row.attempts,
                        settings.delivery.retry_initial_seconds,
                        settings.delivery.retry_max_seconds,
                    )
                    row.next_attempt_at = utcnow() + dt.timedelta(seconds=delay)
                    log.warning(
                        "delivery of %s to %s failed (attempt %d, retry in %.0f s): %s",
                        row.result.sop_instance_uid, name, row.attempts, delay, message,
                    )
            session.commit()
        return done


def create_deliveries(session, result: Result, settings: Settings) -> None:
    """Add one pending delivery per configured destination for a new result."""
    for dest in settings.destinations:
        session.add(Delivery(result=result, destination=dest.name))

"""Clinician review of a job's results before they leave the node (``review = true`` on a rule
or a ``[[models]]`` entry).

A job under review is ``done`` with ``review = "awaiting"``: its results exist (the study page
shows the overlay and measurements) and their deliveries are ``held``. A user with the reviewer
or admin role then decides, and every decision is a row of the ``reviews`` audit trail (who,
role, when, decision, comment):

* :func:`approve`: the SR is replaced by a VERIFIED copy naming the reviewer as verifying
  observer, with the organisation and the date-time (PS3.3 C.17.2, :func:`dicom_ai.report.verify.verified_sr`;
  a new SOP Instance UID, since the object changed and the unverified one was never sent), the
  held deliveries become due, and the results of an earlier run that these replace are
  withdrawn (:func:`dicom_ai.export.outbox.withdraw_superseded`).
* :func:`reject`: nothing more is sent (held and pending deliveries become ``rejected``); a
  destination that already received the results (a job approved before, or one not under
  review) gets an IHE IOCM rejection note (:func:`dicom_ai.export.outbox.withdraw`). The job
  stays as a correction candidate for training (``dicom-ai reviews candidates``).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from pathlib import Path

import pydicom
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Job, Review, utcnow
from dicom_ai.cache.states import DeliveryState, JobState, ResultKind, ReviewState
from dicom_ai.cache.store import FileStore
from dicom_ai.config import Settings
from dicom_ai.export.outbox import withdraw, withdraw_superseded
from dicom_ai.package.manifest import load_manifest

log = logging.getLogger(__name__)

#: Roles that may approve or reject results.
REVIEWER_ROLES = ("reviewer", "admin")
_COMMENT_MAX = 2000


class ReviewError(ValueError):
    """The decision cannot be taken on this job (the message says why)."""


def _manifest(job: Job):
    try:
        return load_manifest(Path(job.model_path))
    except (OSError, ValueError) as exc:  # the notes then name the node rather than the model
        log.warning("job %d: model manifest not readable for the rejection notes: %s", job.id, exc)
        return None


def _decided(session, job: Job, who: str, role: str, decision: str, comment: str) -> None:
    if role not in REVIEWER_ROLES:
        raise ReviewError(f"role {role!r} may not review results")
    session.add(Review(job=job, who=who, role=role, decision=decision, comment=comment[:_COMMENT_MAX]))
    log.info("job %d %sd by %s (%s)%s", job.id, decision, who, role, f": {comment[:200]}" if comment else "")


def approve(sessions: sessionmaker, store: FileStore, settings: Settings, job_id: int, *, who: str, role: str,
            comment: str = "", when: dt.datetime | None = None) -> None:
    """Approve the results of a job awaiting review and send them.

    Parameters
    ----------
    who, role:
        The reviewer's user name (the SR's Verifying Observer Name) and role (reviewer or admin).
    comment:
        Kept in the audit trail (at most 2000 characters).
    when:
        Verification DateTime; now (UTC) by default.

    Raises
    ------
    ReviewError
        If the job does not exist, is not done, or is not awaiting review, or the role may not
        review.
    """
    from dicom_ai.report.verify import verified_sr  # deferred: start-up time (highdicom)

    when = when or dt.datetime.now(dt.timezone.utc)
    organization = settings.review.organization or settings.node.ae_title
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ReviewError(f"no job {job_id}")
        if job.state != JobState.DONE or job.review != ReviewState.AWAITING:
            raise ReviewError(f"job {job_id} is not awaiting review (state {job.state}, review {job.review or 'none'})")
        _decided(session, job, who, role, "approve", comment)
        for result in job.results:
            if result.kind == ResultKind.SR:
                verified = verified_sr(pydicom.dcmread(store.abspath(result.path)), observer_name=who,
                                       organization=organization, when=when)
                buf = io.BytesIO()
                verified.save_as(buf, enforce_file_format=True)
                rel = store.result_relpath(job.id, "sr-verified")
                store.write(rel, buf.getbuffer())
                result.path, result.sop_instance_uid = rel, str(verified.SOPInstanceUID)
            for d in result.deliveries:
                if d.state == DeliveryState.HELD:
                    d.state, d.next_attempt_at, d.retry_since = DeliveryState.PENDING, utcnow(), utcnow()
                    d.last_status = f"approved by {who}"
        job.review = ReviewState.APPROVED
        withdraw_superseded(session, job, store, settings, _manifest(job))


def reject(sessions: sessionmaker, store: FileStore, settings: Settings, job_id: int, *, who: str, role: str,
           comment: str = "") -> int:
    """Reject the results of a job: nothing more is sent, and what was sent is withdrawn.

    Returns
    -------
    int
        How many rejection notes were queued (destinations that had received the results).

    Raises
    ------
    ReviewError
        If the job does not exist, is not done, was rejected already, or the role may not
        review.
    """
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ReviewError(f"no job {job_id}")
        if job.state != JobState.DONE or job.review == ReviewState.REJECTED:
            raise ReviewError(f"job {job_id} cannot be rejected (state {job.state}, review {job.review or 'none'})")
        _decided(session, job, who, role, "reject", comment)
        job.review = ReviewState.REJECTED
        own = [r for r in job.results if r.kind != ResultKind.KOS]
        notes = withdraw(session, job, own, store, settings, _manifest(job), not_sent=DeliveryState.REJECTED,
                         description=f"Rejected by a clinician's review{': ' + comment[:200] if comment else ''}",
                         why=f"rejected by {who}")
        return len(notes)

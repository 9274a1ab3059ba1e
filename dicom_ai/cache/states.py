"""The values of the index's ``state`` and ``kind`` columns, by name.

Each is a :class:`enum.StrEnum`: a member *is* its string (``JobState.DONE == "done"``), so the
columns stay ``String`` and hold the same text as before (no data migration), rows read back as
plain strings compare equal to the members, and templates and JSON see the strings.
"""

from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    """:class:`dicom_ai.cache.db.Series` ``state``: receiving -> complete (jobs created) ->
    purged (by retention; the row stays, its instances are gone)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    PURGED = "purged"


class JobState(StrEnum):
    """:class:`dicom_ai.cache.db.Job` ``state``: queued -> running -> done | failed."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """:class:`dicom_ai.cache.db.Delivery` ``state``: pending -> sending -> delivered, or back to
    pending (retry), or failed (a dead letter)."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # never sent: a newer run of the model replaced the result first
    HELD = "held"  # waits for a clinician's review of the job; sent once approved
    REJECTED = "rejected"  # never sent: a clinician rejected the job's results


class ResultKind(StrEnum):
    """:class:`dicom_ai.cache.db.Result` ``kind``: the DICOM object a job produced."""

    SEG = "SEG"
    SR = "SR"
    SC = "SC"  # one Secondary Capture image of the burned-in series (one row per image)
    KOS = "KOS"  # an IOCM rejection note withdrawing results that a newer run replaced


class ReviewState(StrEnum):
    """:class:`dicom_ai.cache.db.Job` ``review``: none asked (``""``), or awaiting -> approved |
    rejected (a job's results can also be rejected after approval, or without a review asked)."""

    NONE = ""
    AWAITING = "awaiting"
    APPROVED = "approved"
    REJECTED = "rejected"

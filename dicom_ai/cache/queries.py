"""Read-only queries of the index that the command line and the web pages list from.

Each function takes an open ORM session and returns rows of :mod:`dicom_ai.cache.db` bound to
it: read their relationships before the session closes. "Newest" means the highest id (rows
are numbered in insertion order), except where a function says otherwise. ``limit`` is a
number of rows; nothing here writes.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_ai.cache.db import Delivery, IdentityConflict, ModelEvent, ModelVersion, Series, Study
from dicom_ai.cache.states import DeliveryState, SeriesState

Row = TypeVar("Row")


def ping(s: Session) -> None:
    """Read one series id: raises (``sqlalchemy.exc.SQLAlchemyError``) when the index cannot be
    read."""
    s.execute(select(Series.id).limit(1))


def newest(s: Session, model: type[Row], limit: int, state: str = "") -> list[Row]:
    """At most ``limit`` rows of ``model`` (a table with an ``id``; with ``state``, one that has a
    ``state`` column too), newest first; only those in ``state`` when it is not empty."""
    columns: Any = model  # a mapped class: its columns are class attributes
    stmt = select(model).order_by(columns.id.desc()).limit(limit)
    if state:
        stmt = stmt.where(columns.state == state)
    return list(s.scalars(stmt))


def idle_series(s: Session, limit: int) -> list[Series]:
    """At most ``limit`` complete series that no job was made for, the most recently completed
    first (their ``routing_note`` says why, per rule)."""
    return list(s.scalars(
        select(Series).where(Series.state == SeriesState.COMPLETE, ~Series.jobs.any())
        .order_by(Series.completed_at.desc()).limit(limit)
    ))


def series_by_uid(s: Session, series_uid: str) -> Series | None:
    """The series with this Series Instance UID, or None."""
    return s.scalar(select(Series).where(Series.series_instance_uid == series_uid))


def studies(s: Session) -> list[Study]:
    """Every study, newest first."""
    return list(s.scalars(select(Study).order_by(Study.id.desc())))


def model_versions(s: Session) -> list[ModelVersion]:
    """Every version in the model registry, by model name, then in the order they were added."""
    return list(s.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id)))


def model_events(s: Session, limit: int, name: str | None = None) -> list[ModelEvent]:
    """At most ``limit`` changes to the model registry, newest first; only those of model
    ``name`` when given."""
    query = select(ModelEvent).order_by(ModelEvent.id.desc()).limit(limit)
    if name:
        query = query.where(ModelEvent.name == name)
    return list(s.scalars(query))


def failed_deliveries(s: Session) -> list[Delivery]:
    """Every delivery in state ``failed`` (the dead letters), in no particular order."""
    return list(s.scalars(select(Delivery).where(Delivery.state == DeliveryState.FAILED)))


def identity_conflicts(s: Session, limit: int) -> list[IdentityConflict]:
    """At most ``limit`` instances refused for a patient-identity conflict, newest first."""
    return list(s.scalars(select(IdentityConflict).order_by(IdentityConflict.id.desc()).limit(limit)))

"""Writing received instances into the index (patient, study, series, instance rows)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_ai.cache.db import Counter, Instance, Patient, Series, Study, utcnow

T = TypeVar("T")
_write_lock = threading.Lock()  # one writer per process: SQLite serialises writers anyway


@dataclass(frozen=True)
class InstanceMeta:
    """The attributes the index keeps of a received instance (all strings DICOM-decoded)."""

    patient_id: str
    patient_name: str
    study_uid: str
    study_date: str
    accession_number: str
    study_description: str
    series_uid: str
    modality: str
    body_part: str
    series_description: str
    series_number: int | None
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    association: str = ""  # an id unique to the association that brought the instance
    image_type: str = ""
    orientation: str = ""  # AXIAL | CORONAL | SAGITTAL | OBLIQUE | "" (no Image Orientation)
    slice_position: float | None = None  # mm, Image Position (Patient) along the slice normal
    slice_thickness: float | None = None  # mm
    expected_instances: int | None = None  # instances of the series, when the data set says


def _get_or_create_series(session: Session, meta: InstanceMeta, calling_ae: str) -> Series:
    series = session.scalar(select(Series).where(Series.series_instance_uid == meta.series_uid))
    if series is not None:
        return series
    study = session.scalar(select(Study).where(Study.study_instance_uid == meta.study_uid))
    if study is None:
        patient = session.scalar(select(Patient).where(Patient.patient_id == meta.patient_id))
        if patient is None:
            patient = Patient(patient_id=meta.patient_id, patient_name=meta.patient_name)
            session.add(patient)
        study = Study(
            study_instance_uid=meta.study_uid,
            patient=patient,
            study_date=meta.study_date,
            accession_number=meta.accession_number,
            description=meta.study_description,
        )
        session.add(study)
    series = Series(
        series_instance_uid=meta.series_uid,
        study=study,
        modality=meta.modality,
        body_part=meta.body_part,
        description=meta.series_description,
        series_number=meta.series_number,
        calling_ae_title=calling_ae,
    )
    session.add(series)
    session.flush()
    return series


# Built once: the per-instance path runs these on every C-STORE, and building statements costs
# more than running them. The instance row's columns, bound to index_instance's parameters:
_INSTANCE_VALUES = {
    column: bindparam(param)
    for column, param in {
        "series_fk": "series_id",
        "sop_class_uid": "sop_class_uid",
        "instance_number": "instance_number",
        "transfer_syntax_uid": "transfer_syntax_uid",
        "path": "path",
        "size": "size",
        "received_at": "now",
        "association": "association",
        "image_type": "image_type",
        "orientation": "orientation",
        "slice_position": "slice_position",
        "slice_thickness": "slice_thickness",
    }.items()
}
_SERIES_ID = select(Series.id).where(Series.series_instance_uid == bindparam("series_uid"))
_UPDATE_INSTANCE = (
    update(Instance).where(Instance.sop_instance_uid == bindparam("uid")).values(**_INSTANCE_VALUES)
)
_INSERT_INSTANCE = Instance.__table__.insert().values(
    sop_instance_uid=bindparam("uid"), **_INSTANCE_VALUES
)
_REOPEN_SERIES = (
    update(Series)
    .where(Series.id == bindparam("series_id"), Series.state != "receiving")
    .values(state="receiving", completion_signal=None, released_association=None, released_at=None)
)
_TOUCH_SERIES = (
    update(Series)
    .where(Series.id == bindparam("series_id"))
    .values(
        last_received_at=bindparam("now"),
        expected_instances=func.coalesce(bindparam("expected"), Series.expected_instances),
    )
)


def index_instance(
    sessions: sessionmaker, meta: InstanceMeta, relpath: str, size: int, calling_ae: str
) -> bool:
    """Insert or update the rows of one stored instance and touch its series.

    A series already processed goes back to ``receiving`` (a late instance), so it is looked at
    again by the scheduler. Returns True when the instance was new.

    This runs once per C-STORE, before the response: once the series exists it is a few
    prepared statements on a plain connection and one commit, with no ORM object loaded.
    """
    params = {
        "uid": meta.sop_instance_uid,
        "series_uid": meta.series_uid,
        "sop_class_uid": meta.sop_class_uid,
        "instance_number": meta.instance_number,
        "transfer_syntax_uid": meta.transfer_syntax_uid,
        "path": relpath,
        "size": size,
        "now": utcnow(),
        "association": meta.association,
        "image_type": meta.image_type,
        "orientation": meta.orientation,
        "slice_position": meta.slice_position,
        "slice_thickness": meta.slice_thickness,
        "expected": meta.expected_instances,
    }
    engine = sessions.kw["bind"]
    return _twice(lambda: _index_once(engine, meta, calling_ae, params))


def _twice(write: Callable[[], T]) -> T:
    """Run a write transaction, and once more if another receiver process inserted the same
    patient, study, series, instance or counter between our look-up and our insert (the second
    pass finds its rows)."""
    try:
        return write()
    except IntegrityError:
        return write()


def _index_once(engine: Engine, meta: InstanceMeta, calling_ae: str, params: dict) -> bool:
    with _write_lock, engine.begin() as conn:
        series_id = conn.scalar(_SERIES_ID, params)
        if series_id is None:  # first instance of the series: create its rows
            with Session(bind=conn) as session:
                series_id = _get_or_create_series(session, meta, calling_ae).id
        params["series_id"] = series_id
        new = conn.execute(_UPDATE_INSTANCE, params).rowcount == 0
        if new:
            conn.execute(_INSERT_INSTANCE, params)
            conn.execute(_REOPEN_SERIES, params)  # a late instance re-opens its series
        conn.execute(_TOUCH_SERIES, params)
        _count(conn, "instances_received")
    return new


_COUNT = update(Counter).where(Counter.name == bindparam("counter")).values(value=Counter.value + 1)


def _count(conn: Any, name: str) -> None:
    if conn.execute(_COUNT, {"counter": name}).rowcount == 0:
        conn.execute(Counter.__table__.insert().values(name=name, value=1))


def count(sessions: sessionmaker, name: str) -> None:
    """Add one to the counter ``name`` (shared by every process through the index)."""
    engine = sessions.kw["bind"]

    def write() -> None:
        with _write_lock, engine.begin() as conn:
            _count(conn, name)

    _twice(write)


def mark_released(sessions: sessionmaker, association: str, series_uids: list[str]) -> None:
    """Record that ``association``, which brought instances of ``series_uids``, was released."""
    now = utcnow()
    with _write_lock, sessions.begin() as session:
        session.execute(
            update(Series)
            .where(Series.series_instance_uid.in_(series_uids), Series.state == "receiving")
            .values(released_association=association, released_at=now)
            .execution_options(synchronize_session=False)
        )

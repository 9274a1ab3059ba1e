"""Writing received instances into the index (patient, study, series, instance rows)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_ai.cache.db import Instance, Patient, Series, Study, utcnow

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
    return series


def index_instance(
    sessions: sessionmaker, meta: InstanceMeta, relpath: str, size: int, calling_ae: str
) -> bool:
    """Insert or update the rows of one stored instance and touch its series.

    A series already processed goes back to ``receiving`` (a late instance), so it is looked at
    again by the scheduler. Returns True when the instance was new.
    """
    now = utcnow()
    with _write_lock, sessions.begin() as session:
        series = _get_or_create_series(session, meta, calling_ae)
        inst = session.scalar(
            select(Instance).where(Instance.sop_instance_uid == meta.sop_instance_uid)
        )
        new = inst is None
        if new:
            inst = Instance(sop_instance_uid=meta.sop_instance_uid, series=series)
            session.add(inst)
        inst.sop_class_uid = meta.sop_class_uid
        inst.instance_number = meta.instance_number
        inst.transfer_syntax_uid = meta.transfer_syntax_uid
        inst.path = relpath
        inst.size = size
        inst.received_at = now
        series.last_received_at = now
        if new and series.state != "receiving":
            series.state = "receiving"
            series.completion_signal = None
        return new

"""Prepared statements (dicom_ai.cache.prepared): the index statements of every C-STORE, run on
the driver's cursor, give what ``Connection.execute`` gives, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dicom_ai.cache import index
from dicom_ai.cache.db import Instance, Patient, Series, Study, open_index
from dicom_ai.cache.prepared import Prepared
from dicom_ai.cache.states import SeriesState

SERIES_UID, STUDY_UID = "1.2.3.4.5", "1.2.3.4"


def _engine_with_a_series(index_url: str, state: str = SeriesState.RECEIVING):
    engine = open_index(index_url).kw["bind"]
    with engine.begin() as conn:
        patient = conn.execute(insert(Patient).values(patient_id="P1", patient_name="DOE^J", issuer_of_patient_id="",
                                                      birth_date="19700101", sex="F")).inserted_primary_key[0]
        study = conn.execute(insert(Study).values(study_instance_uid=STUDY_UID, patient_fk=patient)).inserted_primary_key[0]
        series = conn.execute(insert(Series).values(series_instance_uid=SERIES_UID, study_fk=study,
                                                    state=state)).inserted_primary_key[0]
    return engine, series


def _instance(series_id: int, uid: str, now: dt.datetime) -> dict:
    return {"uid": uid, "series_id": series_id, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "instance_number": 7, "transfer_syntax_uid": "1.2.840.10008.1.2.4.80", "path": f"instances/{uid}.dcm",
            "size": 1234, "now": now, "association": "99-1", "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
            "orientation": "AXIAL", "slice_position": -12.5, "slice_thickness": 1.25}


def test_rows_read_as_connection_execute_reads_them(index_url):
    engine, series_id = _engine_with_a_series(index_url)
    params = {"series_uid": SERIES_UID, "study_uid": STUDY_UID, "uid": "1.9"}
    with engine.connect() as conn:
        for prepared in (index._SERIES_ROW, index._STUDY_ROW):
            ours = prepared.first(conn, params)
            theirs = conn.execute(prepared.statement, params).first()
            assert ours is not None and theirs is not None
            assert tuple(ours) == tuple(theirs)
            assert ours._fields == tuple(theirs._fields)
        assert index._SERIES_ROW.first(conn, {**params, "series_uid": "1.8"}) is None
        assert index._SERIES_ROW.first(conn, params).id == series_id
        assert index._SERIES_ROW.first(conn, params).patient_id == "P1"


@pytest.mark.parametrize("microsecond", [0, 123456])
def test_an_instance_row_written_on_the_cursor_reads_back_through_the_orm(index_url, microsecond):
    # the DateTime column's bind conversion is applied: SQLite's text form must be the one the
    # ORM parses back, whole seconds included (where datetime.isoformat drops the fraction)
    engine, series_id = _engine_with_a_series(index_url)
    now = dt.datetime(2026, 12, 4, 20, 15, 30, microsecond)
    with engine.begin() as conn:
        index._INSERT_INSTANCE.execute(conn, _instance(series_id, "1.2.3.4.5.1", now))
        assert index._INSTANCE_ROW.first(conn, {"uid": "1.2.3.4.5.1"}) == (
            "instances/1.2.3.4.5.1.dcm", SERIES_UID, STUDY_UID)
    with Session(engine) as session:
        row = session.scalars(select(Instance)).one()
        assert (row.received_at, row.size, row.slice_position, row.instance_number) == (now, 1234, -12.5, 7)
        assert session.scalar(select(Instance.id).where(Instance.received_at == now)) == row.id


def test_values_fixed_in_the_statement_are_bound(index_url):
    # _REOPEN_SERIES compares with and sets the state literals the statement was built with
    engine, series_id = _engine_with_a_series(index_url, state=SeriesState.COMPLETE)
    with engine.begin() as conn:
        assert index._REOPEN_SERIES.execute(conn, {"series_id": series_id}) == 1
        assert index._REOPEN_SERIES.execute(conn, {"series_id": series_id}) == 0  # receiving now
    with engine.connect() as conn:
        assert conn.execute(select(Series.state)).scalar_one() == SeriesState.RECEIVING


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it_and_the_transaction_rolls_back(index_url):
    engine, series_id = _engine_with_a_series(index_url)
    now = dt.datetime(2026, 12, 4, 20, 0, 0)
    with pytest.raises(IntegrityError):  # what index._twice retries on
        with engine.begin() as conn:
            index._INSERT_INSTANCE.execute(conn, _instance(series_id, "1.2.3.4.5.2", now))
            index._INSERT_INSTANCE.execute(conn, _instance(series_id, "1.2.3.4.5.2", now))
    with engine.connect() as conn:
        assert conn.execute(select(Instance)).first() is None  # the first insert went with the second


def test_a_missing_parameter_and_a_column_needing_conversion_are_refused(index_url):
    engine, _series_id = _engine_with_a_series(index_url)
    with engine.connect() as conn:
        with pytest.raises(KeyError):
            index._SERIES_ROW.first(conn, {})
        received = Prepared(select(Instance.received_at))
        if engine.dialect.name == "sqlite":  # DateTime is kept as text there; SQLAlchemy parses it
            with pytest.raises(TypeError, match="received_at"):
                received.first(conn, {})
        else:  # the driver returns a datetime itself
            assert received.first(conn, {}) is None

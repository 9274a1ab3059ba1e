"""The index schema is made and upgraded by Alembic migrations, and they match the models."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from dicom_ai.cache.db import HEAD, Base, Delivery, Instance, Job, Patient, Study, _alembic, open_index


def _newest() -> str:
    """The head revision of the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic(None)).get_current_head()


def _head(url: str) -> str:
    with create_engine(url).connect() as conn:
        return conn.execute(text("select version_num from alembic_version")).scalar_one()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database on each engine: an SQLite file, a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'i.sqlite'}"
    return request.getfixturevalue("postgres").database()


def test_a_new_index_is_at_the_newest_revision_and_matches_the_models(empty_url):
    open_index(empty_url)
    assert _head(empty_url) == _newest() == HEAD == "0010"
    with create_engine(empty_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"the models changed without a migration: {diff}"


def test_keys_hold_64_bits(empty_url):
    """Keys and references past 2**31 (PostgreSQL's INTEGER would refuse them)."""
    sessions = open_index(empty_url)
    big = 2**40
    with sessions.begin() as s:
        s.add(Patient(id=big, patient_id="P", patient_name="N"))
        s.flush()
        s.add(Study(id=big + 1, study_instance_uid="1.2", patient_fk=big))
    with sessions() as s:
        assert s.get(Study, big + 1).patient_fk == big


def test_an_index_from_before_migrations_is_adopted_and_upgraded_keeping_its_rows(empty_url):
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0001")  # the schema dicom-ai had before migrations
    with engine.begin() as db:
        for sql in [
            "drop table alembic_version",
            "insert into patients (id, patient_id, patient_name) values (1, 'P', 'N')",
            "insert into studies (id, study_instance_uid, patient_fk, study_date, accession_number,"
            " description, created_at) values (1, '1.2', 1, '', '', '', '2026-01-01')",
            "insert into series (id, series_instance_uid, study_fk, modality, body_part, description,"
            " calling_ae_title, state, first_received_at, last_received_at, routing_note) values"
            " (1, '1.2.3', 1, 'CT', '', '', 'A', 'complete', '2026-01-01', '2026-01-01', '')",
            "insert into instances (sop_instance_uid, sop_class_uid, series_fk, transfer_syntax_uid,"
            " path, size, received_at) values ('1.2.3.4', '1.2.840.10008.5.1.4.1.1.2', 1, '1.2', 'x', 1,"
            " '2026-01-01')",
            "insert into jobs (id, series_fk, model_name, model_version, model_path, state, reason,"
            " attempts, created_at, timings, findings) values (1, 1, 'm', '1', '/m', 'done', '', 1,"
            " '2026-01-01', '{}', '{}')",
            "insert into results (id, job_fk, kind, sop_class_uid, sop_instance_uid,"
            " series_instance_uid, path, created_at) values (1, 1, 'SEG', '1', '2', '3', 'p', '2026-01-01')",
            "insert into deliveries (result_fk, destination, state, attempts, next_attempt_at,"
            " last_status, created_at) values (1, 'pacs', 'failed', 5, '2026-01-01', 'x', '2026-01-01')",
        ]:
            db.execute(text(sql))
    engine.dispose()
    sessions = open_index(empty_url)
    assert _head(empty_url) == _newest()
    with sessions() as s:
        job, inst, d = s.get(Job, 1), s.query(Instance).one(), s.query(Delivery).one()
        assert (job.priority, job.rule, job.destinations) == (0, "", None)
        assert inst.association == "" and inst.slice_position is None
        assert d.state == "failed" and d.retry_since is not None
    assert "users" in inspect(create_engine(empty_url)).get_table_names()

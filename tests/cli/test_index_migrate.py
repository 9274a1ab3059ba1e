"""``dicom-ai index migrate --to URL``: an SQLite index copied whole into an empty PostgreSQL
database, keys and all; a target that holds rows is refused and left as it was."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from dicom_ai.cache.db import (
    Base,
    Delivery,
    IdentityConflict,
    Instance,
    Job,
    Patient,
    Result,
    Review,
    Series,
    Study,
    open_index,
)
from dicom_ai.cache.index import count
from dicom_ai.cache.workers import register
from dicom_ai.cli import app
from dicom_ai.config import load_settings
from dicom_ai.models.registry import seed_shipped
from dicom_ai.web.auth import add_user

CT = "1.2.840.10008.5.1.4.1.1.2"


def _source(tmp_path: Path) -> Path:
    """A config whose SQLite index holds a row in every table, with gaps in the keys."""
    config = tmp_path / "dicom-ai.toml"
    config.write_text(f'[node]\ndata_dir = "{(tmp_path / "var").as_posix()}"\n', encoding="utf-8")
    settings = load_settings(config)
    sessions = open_index(settings.database_url)
    t0 = dt.datetime(2026, 11, 30, 9, 0, 0, 123456)
    with sessions.begin() as s:
        study = Study(study_instance_uid="1.2.3", patient=Patient(patient_id="P1", patient_name="Doe^Jane"),
                      study_date="20261130", accession_number="ACC42")
        series = Series(id=17, series_instance_uid="1.2.3.4", study=study, modality="CT", last_received_at=t0)
        s.add_all(Instance(sop_instance_uid=f"1.2.3.4.{n}", sop_class_uid=CT, series=series,
                           transfer_syntax_uid="1.2.840.10008.1.2.1", size=2**33 + n, path=f"x/{n}.dcm")
                  for n in (1, 2, 3))
        job = Job(id=41, series=series, model_name="dicom-ai-lung", model_version="1.0.0", model_path="/m",
                  state="done", review="approved", findings={"Left lung": {"volume_ml": 2345.6}},
                  timings={"total": 4.2}, destinations=["pacs"])
        result = Result(job=job, kind="SEG", sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                        sop_instance_uid="1.2.3.4.5.6", series_instance_uid="1.2.3.4.5", path="results/41/seg.dcm")
        s.add_all([job, Delivery(result=result, destination="pacs", state="delivered", delivered_at=t0),
                   Review(job=job, at=t0, who="dr.kim", role="reviewer", decision="approve", comment="fine"),
                   IdentityConflict(sop_instance_uid="1.2.3.4.9", series_instance_uid="1.2.3.4",
                                    study_instance_uid="1.2.3", calling_ae_title="CT1", kind="patient",
                                    detail="PatientID")])
    add_user(sessions, "boss", "admin", "admin-pass")
    seed_shipped(sessions, settings)
    count(sessions, "instances_received")
    register(sessions, "gpu-1-4242", "gpu-1", 4242, "cuda", ["gpu"])
    sessions.kw["bind"].dispose()
    return config


def _rows(url: str) -> dict[str, list[dict]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = {t.name: [dict(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)).mappings()]
                for t in Base.metadata.sorted_tables}
    engine.dispose()
    return rows


def test_an_sqlite_index_is_copied_whole_to_postgresql(tmp_path: Path, postgres) -> None:
    config = _source(tmp_path)
    source_url = load_settings(config).database_url
    target = postgres.database("moved")
    run = CliRunner().invoke(app, ["index", "migrate", "--to", target, "--config", str(config)])
    assert run.exit_code == 0, run.output
    assert "instances" in run.output and "next: set node.database_url" in run.output

    before, after = _rows(source_url), _rows(target)
    assert all(before[name] for name in before), {k: len(v) for k, v in before.items()}  # every table had rows
    assert after == before  # every row, every key, every value

    # new rows continue after the copied keys
    sessions = open_index(target)
    with sessions.begin() as s:
        series = s.get(Series, 17)
        job = Job(series=series, model_name="m", model_version="1", model_path="/m")
        s.add(job)
        s.flush()
        assert job.id == 42

    # a target that holds an index is refused and not touched
    again = CliRunner().invoke(app, ["index", "migrate", "--to", target, "--config", str(config)])
    assert again.exit_code == 2 and "already holds index rows" in again.output, again.output
    assert len(_rows(target)["jobs"]) == 2
    same = CliRunner().invoke(app, ["index", "migrate", "--to", source_url, "--config", str(config)])
    assert same.exit_code == 2, same.output

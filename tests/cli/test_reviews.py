"""``dicom-ai reviews list`` and ``candidates`` on an index filled by hand (in-process CliRunner)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_ai.cache.db import Instance, Job, Patient, Review, Series, Study, open_index
from dicom_ai.cli import app
from dicom_ai.config import load_settings

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_A = "1.2.826.0.1.3680043.8.498.1.1"
SERIES_B = "1.2.826.0.1.3680043.8.498.1.2"


def _config(tmp_path: Path, index_url: str) -> Path:
    data = tmp_path / "var"
    path = tmp_path / "dicom-ai.toml"
    path.write_text(f'[node]\ndata_dir = "{data.as_posix()}"\ndatabase_url = "{index_url}"\n', encoding="utf-8")
    return path


def _invoke(config: Path, *args: str):
    result = CliRunner().invoke(app, [*args, "--config", str(config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def index(index_url: str, tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    """A config, its data dir, and an index with two jobs: job a rejected then (last) rejected
    again with a comment, job b approved; series a has two instance files."""
    config = _config(tmp_path, index_url)
    settings = load_settings(config)
    sessions = open_index(settings.database_url)
    t0 = dt.datetime(2026, 11, 30, 9, 0, 0)
    with sessions.begin() as s:
        patient = Patient(patient_id="P1", patient_name="Doe^Jane")
        study = Study(study_instance_uid=STUDY_UID, patient=patient, study_date="20261130",
                      accession_number="ACC42")
        a = Series(series_instance_uid=SERIES_A, study=study, modality="CT", description="Chest [thin]")
        b = Series(series_instance_uid=SERIES_B, study=study, modality="CT", description="Abdomen")
        for n in (1, 2):
            s.add(Instance(sop_instance_uid=f"{SERIES_A}.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                           series=a, transfer_syntax_uid="1.2.840.10008.1.2.1", size=1,
                           path=f"instances/{STUDY_UID}/{SERIES_A}/{SERIES_A}.{n}.dcm"))
        job_a = Job(series=a, model_name="dicom-ai-lung", model_version="1.0.0", model_path="/m",
                    review="rejected")
        job_b = Job(series=b, model_name="dicom-ai-liver", model_version="2.1.0", model_path="/m",
                    review="approved")
        s.add_all([
            Review(job=job_a, at=t0, who="dr.ray", role="reader", decision="reject", comment="misses the apex"),
            Review(job=job_b, at=t0 + dt.timedelta(minutes=1), who="dr.kim", role="admin", decision="approve",
                   comment="fine"),
            Review(job=job_a, at=t0 + dt.timedelta(minutes=2), who="dr.lee", role="admin", decision="reject",
                   comment="left [lung] leaks"),
        ])
        s.flush()
        ids = {"a": job_a.id, "b": job_b.id}
    sessions.kw["bind"].dispose()
    return config, Path(settings.node.data_dir), ids


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_list_newest_first(index) -> None:
    config, _, ids = index
    out = _invoke(config, "reviews", "list")
    rows = [line for line in _lines(out) if "dr." in line]
    assert len(rows) == 3, out
    assert "dr.lee (admin)" in rows[0] and "dr.kim (admin)" in rows[1] and "dr.ray (reader)" in rows[2]
    first = rows[0]
    for text in ("2026-11-30 09:02:00", "reject", str(ids["a"]), "dicom-ai-lung 1.0.0", "ACC42, 2026-11-30",
                 "Chest [thin]", "left [lung] leaks"):  # markup-looking text printed as it is
        assert text in first, (text, first)
    assert "approve" in rows[1] and "dicom-ai-liver 2.1.0" in rows[1] and "Abdomen" in rows[1]


def test_list_by_decision(index) -> None:
    config, _, _ = index
    out = _invoke(config, "reviews", "list", "--decision", "approve")
    assert "dr.kim" in out and "dr.ray" not in out and "dr.lee" not in out
    out = _invoke(config, "reviews", "list", "--decision", "reject", "--limit", "1")
    assert "dr.lee" in out and "dr.ray" not in out and "dr.kim" not in out
    result = CliRunner().invoke(app, ["reviews", "list", "--decision", "maybe", "--config", str(config)])
    assert result.exit_code == 2


def test_candidates(index) -> None:
    config, data_dir, ids = index
    mask = data_dir / "results" / str(ids["a"]) / "mask.npz"
    mask.parent.mkdir(parents=True)
    mask.write_bytes(b"")
    out = _invoke(config, "reviews", "candidates")
    assert f"job {ids['a']}" in out and f"job {ids['b']}" not in out  # only the rejected one
    assert "dicom-ai-lung 1.0.0" in out and "rejected by dr.lee (admin)" in out
    assert f"series uid: {SERIES_A}" in out
    assert f"images: {data_dir / 'instances' / STUDY_UID / SERIES_A}\n" in out
    assert f"mask: {mask}\n" in out  # present: no "(missing)"
    assert "comment: left [lung] leaks" in out and "misses the apex" not in out  # the last rejection


def test_candidate_without_files(index) -> None:
    config, data_dir, ids = index
    out = _invoke(config, "reviews", "candidates")
    assert f"mask: {data_dir / 'results' / str(ids['a']) / 'mask.npz'} (missing)" in out


def test_empty_index(index_url: str, tmp_path: Path) -> None:
    config = _config(tmp_path, index_url)
    assert _lines(_invoke(config, "reviews", "list")) == ["no reviews"]
    assert _lines(_invoke(config, "reviews", "list", "--decision", "reject")) == ["no reject reviews"]
    assert _lines(_invoke(config, "reviews", "candidates")) == ["no rejected jobs: no correction candidates"]

"""Patient identity in the index, the start-up sweep of unindexed instance files and the
worker's own check, on real LIDC slices."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_ai.cache.db import Delivery, IdentityConflict, Instance, Job, Result, Series, open_index
from dicom_ai.cache.identity import PatientIdentity, mixed_patients
from dicom_ai.cache.index import index_instance, index_orphans, instance_meta, store_instance
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.worker import JobRunner

A = {"PatientID": "PAT-A-1", "PatientName": "Alpha^Ann", "PatientBirthDate": "19500101"}
B = {"PatientID": "PAT-B-2", "PatientName": "Beta^Bob", "PatientBirthDate": "19600202"}
PHI = [v for p in (A, B) for v in p.values()]


def test_identity_rule():
    a = PatientIdentity.of("  ID1 ", "", "Doe^John^^", "19600101", "m")
    assert a == PatientIdentity.of("ID1", "", " Doe ^ John", "1960-01-01", "M")
    assert a.differing(PatientIdentity.of("ID1", "", "Doe^John", "", "")) == []  # unknown agrees
    assert a.differing(PatientIdentity.of("ID1", "", "Doe^John", "19600102", "F")) == [
        "PatientBirthDate", "PatientSex"]
    assert a.differing(PatientIdentity.of("", "ISS", "doe^john", "19600101", "M")) == [
        "PatientID", "IssuerOfPatientID", "PatientName"]  # key attributes: empty is a value, case counts
    assert PatientIdentity.of(name="Yamada^Tarou=山田^太郎").name != PatientIdentity.of(name="Yamada^Tarou").name


def test_mixed_patients_compares_each_slice_with_what_came_before():
    ds = [pydicom.Dataset() for _ in range(3)]
    for d, dob in zip(ds, ("", "19700304", "19800101"), strict=False):
        d.PatientID, d.PatientName, d.PatientBirthDate = "X", "N^M", dob
    assert mixed_patients(ds[:2]) == []
    assert mixed_patients(ds) == ["PatientBirthDate"]


def _index(index_url, tmp_path: Path):
    store = FileStore(tmp_path / "var")
    sessions = open_index(index_url)
    return store, sessions


def _dataset(src: Path, study: str, series: str, sop: str | None = None, **attrs) -> pydicom.Dataset:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop or generate_uid()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _put(store: FileStore, ds: pydicom.Dataset) -> str:
    """Write ``ds`` where the receiver would, without indexing it (a kill -9 after the rename)."""
    rel = store.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    store.abspath(rel).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(store.abspath(rel), enforce_file_format=True)
    return rel


def _receive(sessions, store, ds: pydicom.Dataset):
    rel = _put(store, ds)
    data = store.abspath(rel).read_bytes()
    store.abspath(rel).unlink()
    meta = instance_meta(ds, str(ds.file_meta.TransferSyntaxUID))
    return store_instance(sessions, store, meta, rel, data, "CT1")


def test_unindexed_instance_files_are_indexed_or_removed_at_start(index_url, tmp_path, lidc_series, caplog):
    caplog.set_level(logging.INFO, logger="dicom_ai")
    store, sessions = _index(index_url, tmp_path)
    study, series, other_series = generate_uid(), generate_uid(), generate_uid()
    slices = lidc_series[40:48]
    received = [_dataset(f, study, series, **A) for f in slices[:3]]
    for ds in received:
        assert _receive(sessions, store, ds).outcome == "new"
    with sessions.begin() as s:
        s.query(Series).one().state = "complete"

    orphans = [_put(store, _dataset(f, study, series, **A)) for f in slices[3:5]]  # its own series
    orphans.append(_put(store, _dataset(slices[5], study, other_series, **A)))  # a series not indexed
    wrong_patient = _put(store, _dataset(slices[6], study, series, **B))
    # a SOP Instance UID indexed in one series, left on disk under another
    moved = _put(store, _dataset(slices[0], study, other_series, sop=str(received[0].SOPInstanceUID), **A))
    garbage = f"instances/{study}/{other_series}/1.2.3.dcm"
    store.abspath(garbage).write_bytes(b"not DICOM at all")

    assert index_orphans(sessions, store) == (3, 3)
    with sessions() as s:
        paths = {i.path for i in s.query(Instance)}
        states = {x.series_instance_uid: x.state for x in s.query(Series)}
        conflicts = sorted(c.kind for c in s.query(IdentityConflict))
    assert set(orphans) <= paths and len(paths) == 6
    assert states == {series: "receiving", other_series: "receiving"}  # looked at again
    for rel in (wrong_patient, moved, garbage):
        assert not store.abspath(rel).exists()
    assert store.abspath(store.instance_relpath(study, series, str(received[0].SOPInstanceUID))).exists()
    assert conflicts == ["patient", "resent"]
    assert not any(v in r.getMessage() for r in caplog.records for v in PHI)
    assert index_orphans(sessions, store) == (0, 0)  # nothing left; folders in step are skipped


def test_a_mixed_series_indexed_before_the_check_is_not_processed(index_url, tmp_path, lidc_series):
    """Defence in depth: a series whose files name two patients (made directly in the index, as
    an index written before the receiver compared patients holds it) fails its job."""
    settings = load_settings(None, node={"database_url": index_url, "data_dir": str(tmp_path / "var")}, worker={"device": "cpu"},
                             destinations=[{"name": "pacs", "kind": "folder", "path": str(tmp_path / "out")}])
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    by_z = sorted(lidc_series, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    study, series = generate_uid(), generate_uid()
    for i, f in enumerate(by_z[150:156]):
        ds = _dataset(f, study, series, **(A if i < 3 else B))
        rel = _put(store, ds)
        meta = instance_meta(_dataset(f, study, series, sop=str(ds.SOPInstanceUID), **A), "1.2.840.10008.1.2")
        index_instance(sessions, meta, rel, store.abspath(rel).stat().st_size, "CT1")
    with sessions.begin() as s:
        job = Job(series=s.query(Series).one(), model_name="m", model_version="1",
                  model_path=str(tmp_path / "no-model-needed"), state="running")
        s.add(job)
        s.flush()
        job_id = job.id
    JobRunner(settings, sessions, store).run(job_id)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.state == "failed"
        assert "mixes patients" in job.reason
        assert "PatientID" in job.reason and "PatientName" in job.reason
        assert not any(v in job.reason for v in PHI)
        assert s.query(Result).count() == 0 and s.query(Delivery).count() == 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("policy", ["keep_first", "replace"])
def test_a_file_of_an_indexed_instance_that_went_missing_is_written_again(index_url, tmp_path, lidc_series, policy):
    store, sessions = _index(index_url, tmp_path)
    ds = _dataset(lidc_series[10], generate_uid(), generate_uid(), **A)
    assert _receive(sessions, store, ds).outcome == "new"
    with sessions() as s:
        rel = s.query(Instance).one().path
    data = store.abspath(rel).read_bytes()
    store.abspath(rel).unlink()
    meta = instance_meta(ds, str(ds.file_meta.TransferSyntaxUID))
    assert store_instance(sessions, store, meta, rel, data, "CT1", policy).outcome == "restored"
    assert store.abspath(rel).read_bytes() == data

"""A newer run of a model on a series withdraws the results it replaces: every destination that
received them gets an IHE IOCM rejection note (a KOS, 113001 "Rejected for Quality Reasons")
listing exactly those instances, through the outbox; deliveries not yet sent are dropped
(``superseded``); results whose SOP Instance UIDs the new run reuses are not withdrawn (the
archive overwrites them)."""

from __future__ import annotations

import io

import peers
import pydicom
import pytest

from dicom_ai.cache.db import Delivery, Result, open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.export.outbox import deliver_due

from .conftest import file_and_index, run_test_job
from .test_worker_plausibility import Air, _package

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture
def site(tmp_path, lidc_series, orthanc):
    settings = load_settings(None, node={"data_dir": str(tmp_path / "var")}, worker={"device": "cpu"},
                             destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                                            "port": orthanc.dicom_port}])
    store, sessions = FileStore(settings.node.data_dir), open_index(settings.database_url)
    slices = sorted(lidc_series, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    package = _package(tmp_path / "air", Air())

    def add(first: int, last: int) -> None:
        for i in range(first, last):
            file_and_index(sessions, store, pydicom.dcmread(slices[150 + i]), i + 1, patient_id="P7",
                           patient_name="KOS^TEST", accession="ACC7")

    def run() -> int:
        return run_test_job(settings, sessions, store, package)

    return settings, sessions, store, orthanc, add, run


def _uids(sessions, job_id: int, kinds=("SEG", "SR")) -> set[str]:
    with sessions() as s:
        return {r.sop_instance_uid for r in s.query(Result).filter(Result.job_fk == job_id) if r.kind in kinds}


@pytest.mark.integration
def test_delivered_results_are_withdrawn_by_a_rejection_note(tmp_path, site) -> None:
    settings, sessions, store, orthanc, add, run = site
    add(0, 8)
    first = run()
    assert deliver_due(sessions, store, settings) == 2
    add(8, 9)  # a late instance: the re-run covers 9 slices, new SOP Instance UIDs
    second = run()
    old, new = _uids(sessions, first), _uids(sessions, second)
    assert old.isdisjoint(new) and len(old) == len(new) == 2
    with sessions() as s:
        (note,) = s.query(Result).filter(Result.job_fk == second, Result.kind == "KOS").all()
        assert [d.destination for d in note.deliveries] == ["pacs"]
        note_path = store.abspath(note.path)
    assert deliver_due(sessions, store, settings) == 3  # new SEG, SR and the note
    stored = {orthanc.get(f"/instances/{i}/tags?simplify")["SOPInstanceUID"]: i for i in orthanc.get("/instances")}
    assert set(stored) >= old | new
    kos = pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{stored[_uids(sessions, second, ('KOS',)).pop()]}/file")))
    assert kos.SOPClassUID == KOS_CLASS
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    listed = {i.ReferencedSOPInstanceUID for study in kos.CurrentRequestedProcedureEvidenceSequence
              for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert listed == old  # exactly the replaced instances, none of the new ones
    seg = pydicom.dcmread(store.abspath(store.result_relpath(first, "SEG")), stop_before_pixels=True)
    assert (kos.PatientID, kos.StudyInstanceUID) == (seg.PatientID, seg.StudyInstanceUID)  # the results' study
    errors, _ = peers.dciodvfy(note_path)
    assert errors == []


@pytest.mark.integration
def test_unsent_results_are_not_sent_once_replaced(site) -> None:
    settings, sessions, store, orthanc, add, run = site
    add(0, 8)
    first = run()
    add(8, 9)
    second = run()
    with sessions() as s:
        states = {d.result.job_fk: d.state for d in s.query(Delivery)}
        assert {d.state for d in s.query(Delivery) if d.result.job_fk == first} == {"superseded"}
        assert s.query(Result).filter(Result.kind == "KOS").count() == 0
    assert states[second] == "pending"
    assert deliver_due(sessions, store, settings) == 2
    assert {orthanc.get(f"/instances/{i}/tags?simplify")["SOPInstanceUID"] for i in orthanc.get("/instances")} \
        == _uids(sessions, second)


@pytest.mark.integration
def test_a_rerun_on_the_same_instances_withdraws_nothing(site) -> None:
    settings, sessions, store, _, add, run = site
    add(0, 8)
    first = run()
    assert deliver_due(sessions, store, settings) == 2
    second = run()
    assert _uids(sessions, first) == _uids(sessions, second)  # the archive overwrites them
    with sessions() as s:
        assert s.query(Result).filter(Result.kind == "KOS").count() == 0
        assert {d.state for d in s.query(Delivery) if d.result.job_fk == first} == {"delivered"}

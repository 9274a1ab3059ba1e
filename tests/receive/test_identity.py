"""Patient identity at the C-STORE SCP (in-process, DCMTK storescu and pynetdicom on loopback,
real LIDC slices): a series never mixes patients, patients are keyed on ID, issuer and name, a
re-sent SOP Instance UID never moves and follows ``[node] resent_instance``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import peers
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_ai.cache.db import Counter, IdentityConflict, Instance, Patient, Series, Study
from dicom_ai.infer.volume import check_one_patient, read_headers

from .test_scp import _scp, _send

A = {"PatientID": "PAT-A-1", "PatientName": "Alpha^Ann", "PatientBirthDate": "19500101"}
B = {"PatientID": "PAT-B-2", "PatientName": "Beta^Bob", "PatientBirthDate": "19600202"}
PHI = [v for p in (A, B) for v in p.values()]


@pytest.fixture
def scp(tmp_path: Path):
    server = _scp(tmp_path)
    yield server
    server.stop()


def _copies(lidc_series: list[Path], folder: Path, n: int, **attrs) -> list[Path]:
    """``n`` LIDC slices as a new study and series (fresh UIDs), with ``attrs`` set."""
    src = folder.with_name(folder.name + "-src")
    src.mkdir(parents=True)
    for f in lidc_series[100:100 + n]:
        shutil.copy(f, src / f.name)
    return peers.copy_series(src, folder, **attrs)


def _rewrite(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def _conflicts(scp) -> list[IdentityConflict]:
    with scp.sessions() as s:
        return s.query(IdentityConflict).order_by(IdentityConflict.id).all()


def _counter(scp, name: str) -> int:
    with scp.sessions() as s:
        row = s.get(Counter, name)
        return row.value if row else 0


def _refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused (0xA900)" in r.getMessage()]


@pytest.mark.integration
def test_series_mixing_two_patients_keeps_the_first_and_refuses_the_other(scp, dcmtk, lidc_series, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dicom_ai")
    files = _copies(lidc_series, tmp_path / "mixed", 20, **A)
    for f in files[10:]:
        _rewrite(f, **B)
    # --no-halt: go on after a refused instance, as a modality sending a series does
    out = peers.storescu("127.0.0.1", scp.settings.node.port, files, aec="DICOM_AI", extra_args=["--no-halt"])
    assert "Association Request Failed" not in out.stderr, out.stderr
    first = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files[:10]}

    with scp.sessions() as s:
        assert {i.sop_instance_uid for i in s.query(Instance)} == first
        assert s.query(Series).count() == 1 and s.query(Study).count() == 1
        (patient,) = s.query(Patient).all()
        assert (patient.patient_id, patient.patient_name, patient.birth_date) == (
            A["PatientID"], A["PatientName"], A["PatientBirthDate"])
    assert len(list((scp.store.root / "instances").rglob("*.dcm"))) == 10
    assert not peers.leftover_temporaries(scp.store.root)
    conflicts = _conflicts(scp)
    assert len(conflicts) == 10 and {c.kind for c in conflicts} == {"patient"}
    for c in conflicts:
        assert "PatientID" in c.detail and "PatientName" in c.detail and "PatientBirthDate" in c.detail
        assert c.calling_ae_title == "STORESCU"
        assert not any(v in c.detail for v in PHI)
    assert _counter(scp, "identity_conflicts_patient") == 10
    from prometheus_client import CollectorRegistry, generate_latest

    from dicom_ai.web.metrics import IndexCollector

    registry = CollectorRegistry()
    registry.register(IndexCollector(scp.sessions, scp.store.root))
    assert 'dicom_ai_identity_conflicts_total{kind="patient"} 10.0' in generate_latest(registry).decode()
    refusals = _refusals(caplog)
    assert len(refusals) == 10, refusals
    assert not any(v in r.getMessage() for r in caplog.records for v in PHI)  # no PHI in any log line
    # the stored series is one patient's: the slices the worker would read pass its check
    with scp.sessions() as s:
        headers = [ds for _, ds in read_headers(scp.store.abspath(i.path) for i in s.query(Instance))]
    check_one_patient(headers)
    assert len(headers) == 10 and {str(ds.PatientID) for ds in headers} == {A["PatientID"]}


@pytest.mark.integration
def test_patients_keyed_on_id_issuer_and_name(scp, dcmtk, lidc_series, tmp_path):
    sends = {
        "same-id-1": {"PatientID": "SHARED-7", "PatientName": "Gamma^Gil"},
        "same-id-2": {"PatientID": "SHARED-7", "PatientName": "Delta^Dora"},
        "no-id-1": {"PatientID": "", "PatientName": "Eps^Eve"},
        "no-id-2": {"PatientID": "", "PatientName": "Zeta^Zed"},
        "issuer": {"PatientID": "SHARED-7", "PatientName": "Gamma^Gil", "IssuerOfPatientID": "HOSP-B"},
        # the first one's patient again: padded name components are the same name
        "same-again": {"PatientID": " SHARED-7 ", "PatientName": "Gamma^Gil^^^"},
    }
    for name, attrs in sends.items():
        files = _copies(lidc_series, tmp_path / name, 2, **attrs)
        out = peers.storescu("127.0.0.1", scp.settings.node.port, files, aec="DICOM_AI")
        assert out.returncode == 0, out.stderr
    with scp.sessions() as s:
        patients = {(p.patient_id, p.issuer_of_patient_id, p.patient_name): len(p.studies)
                    for p in s.query(Patient)}
        assert s.query(Instance).count() == 12
    assert patients == {
        ("SHARED-7", "", "Gamma^Gil"): 2,
        ("SHARED-7", "", "Delta^Dora"): 1,
        ("", "", "Eps^Eve"): 1,
        ("", "", "Zeta^Zed"): 1,
        ("SHARED-7", "HOSP-B", "Gamma^Gil"): 1,
    }
    assert _conflicts(scp) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_unknown_birth_date_agrees_and_is_completed_then_a_third_one_is_refused(scp, lidc_series, tmp_path):
    files = _copies(lidc_series, tmp_path / "dob", 3, PatientID="DOB-1", PatientName="Eta^Ed", PatientBirthDate="")
    _rewrite(files[1], PatientBirthDate="1970.03.04")  # the ACR-NEMA form of 19700304
    _rewrite(files[2], PatientBirthDate="19800101")
    statuses = [_send(scp, pydicom.dcmread(f)) for f in files]
    assert statuses == [0x0000, 0x0000, 0xA900]
    with scp.sessions() as s:
        assert s.query(Patient).one().birth_date == "19700304"
    assert [c.detail for c in _conflicts(scp)] == ["PatientBirthDate differs from the patient stored for the study"]


def test_resent_identical_changes_nothing(scp, lidc_series, tmp_path):
    (f,) = _copies(lidc_series, tmp_path / "again", 1, **A)
    assert _send(scp, pydicom.dcmread(f)) == 0
    with scp.sessions() as s:
        before = s.query(Instance).one()
    stored = scp.store.abspath(before.path)
    stat = stored.stat()
    assert _send(scp, pydicom.dcmread(f)) == 0
    with scp.sessions() as s:
        after = s.query(Instance).one()
    assert (after.received_at, after.path, after.size) == (before.received_at, before.path, before.size)
    assert (stored.stat().st_ino, stored.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert _counter(scp, "instances_received") == 1 and _conflicts(scp) == []


def _first_and_changed(lidc_series, tmp_path) -> tuple[pydicom.Dataset, pydicom.Dataset]:
    (f,) = _copies(lidc_series, tmp_path / "resent", 1, **A)
    first = pydicom.dcmread(f)
    changed = pydicom.dcmread(f)
    changed.WindowCenter, changed.ImageComments = "-500", "reconstructed again"
    return first, changed


def test_resent_with_other_content_keeps_the_first_by_default(scp, lidc_series, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dicom_ai")
    first, changed = _first_and_changed(lidc_series, tmp_path)
    assert _send(scp, first) == 0
    with scp.sessions() as s:
        rel = s.query(Instance).one().path
    kept = scp.store.abspath(rel).read_bytes()
    assert _send(scp, changed) == 0  # success: a modality retrying after a lost response stops
    assert scp.store.abspath(rel).read_bytes() == kept
    (conflict,) = _conflicts(scp)
    assert conflict.kind == "resent" and "first copy kept" in conflict.detail
    assert conflict.sop_instance_uid == first.SOPInstanceUID
    warned = [r for r in caplog.records if "first copy kept" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING


def test_resent_with_other_content_replaced_when_configured(tmp_path, lidc_series):
    scp = _scp(tmp_path, resent_instance="replace")
    try:
        first, changed = _first_and_changed(lidc_series, tmp_path)
        assert _send(scp, first) == 0
        with scp.sessions.begin() as s:
            s.query(Series).one().state = "complete"
        assert _send(scp, changed) == 0
        with scp.sessions() as s:
            inst = s.query(Instance).one()
            assert s.query(Series).one().state == "receiving"  # looked at again by the scheduler
        stored = pydicom.dcmread(scp.store.abspath(inst.path))
        assert stored.ImageComments == "reconstructed again"
        assert inst.size == scp.store.abspath(inst.path).stat().st_size
        assert [c.kind for c in _conflicts(scp)] == ["resent"] and "replaced" in _conflicts(scp)[0].detail
        assert not peers.leftover_temporaries(scp.store.root)
    finally:
        scp.stop()


@pytest.mark.parametrize("where", ["another study", "another series", "another patient"])
def test_resent_uid_elsewhere_is_refused_and_the_stored_copy_untouched(scp, lidc_series, tmp_path, where, caplog):
    caplog.set_level(logging.INFO, logger="dicom_ai")
    (f,) = _copies(lidc_series, tmp_path / "orig", 1, **A)
    first = pydicom.dcmread(f)
    assert _send(scp, first) == 0
    with scp.sessions() as s:
        row = s.query(Instance).one()
        before = (row.path, row.series_fk, row.size, row.received_at)
    kept = scp.store.abspath(row.path).read_bytes()
    moved = pydicom.dcmread(f)
    if where == "another study":
        moved.StudyInstanceUID, moved.SeriesInstanceUID = generate_uid(), generate_uid()
    elif where == "another series":
        moved.SeriesInstanceUID = generate_uid()
    else:
        for keyword, value in B.items():
            setattr(moved, keyword, value)
    assert _send(scp, moved) == 0xA900
    with scp.sessions() as s:
        row = s.query(Instance).one()
        assert (row.path, row.series_fk, row.size, row.received_at) == before
        assert s.query(Series).count() == 1 and s.query(Study).count() == 1 and s.query(Patient).count() == 1
    assert scp.store.abspath(row.path).read_bytes() == kept
    assert len(list((scp.store.root / "instances").rglob("*"))) == 3  # study/series/file: nothing new
    (conflict,) = _conflicts(scp)
    assert conflict.kind == ("patient" if where == "another patient" else "resent")
    assert len(_refusals(caplog)) == 1


def test_series_under_another_study_is_refused(scp, lidc_series, tmp_path):
    files = _copies(lidc_series, tmp_path / "s", 2, **A)
    assert _send(scp, pydicom.dcmread(files[0])) == 0
    other = pydicom.dcmread(files[1])
    other.StudyInstanceUID = generate_uid()
    assert _send(scp, other) == 0xA900
    (conflict,) = _conflicts(scp)
    assert conflict.kind == "study" and "StudyInstanceUID" in conflict.detail
    with scp.sessions() as s:
        assert s.query(Instance).count() == 1 and s.query(Study).count() == 1


def test_a_refused_instance_written_ahead_leaves_no_file(scp, lidc_series, tmp_path):
    """The file is written under a temporary name while the data set is checked; the index
    transaction refuses the conflicting instance, and neither the file nor its temporary name
    is left."""
    files = _copies(lidc_series, tmp_path / "race", 2, **A)
    _rewrite(files[1], **B)
    assert _send(scp, pydicom.dcmread(files[0])) == 0
    assert _send(scp, pydicom.dcmread(files[1])) == 0xA900
    with scp.sessions() as s:
        assert s.query(Instance).count() == 1
    assert len(list((scp.store.root / "instances").rglob("*.dcm"))) == 1
    assert not peers.leftover_temporaries(scp.store.root)
    assert [c.kind for c in _conflicts(scp)] == ["patient"]


@pytest.mark.integration
def test_node_start_indexes_an_instance_file_a_kill_left_unindexed(tmp_path, dcmtk, lidc_series):
    """``dicom-ai serve`` sweeps at start: a file renamed into place whose index commit never
    happened (kill -9 in between) is indexed; one the checks refuse is removed."""
    from nodeproc import NodeProcess

    from dicom_ai.cache.db import open_index
    from dicom_ai.cache.index import instance_meta, store_instance
    from dicom_ai.cache.store import FileStore

    node = NodeProcess(tmp_path / "node", stable_seconds=600)
    var = tmp_path / "node" / "var"
    store, sessions = FileStore(var), open_index(f"sqlite:///{var / 'index.sqlite'}")
    files = _copies(lidc_series, tmp_path / "left", 3, **A)
    _rewrite(files[2], **B)
    rels = []
    for f in files:
        ds = pydicom.dcmread(f)
        rel = store.instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        rels.append(rel)
        if f is files[0]:  # received and indexed before the kill: the study is patient A's
            meta = instance_meta(ds, str(ds.file_meta.TransferSyntaxUID))
            assert store_instance(sessions, store, meta, rel, f.read_bytes(), "STORESCU").outcome == "new"
        else:
            shutil.copy(f, store.abspath(rel))
    with node:
        with sessions() as s:
            indexed = sorted(i.path for i in s.query(Instance))
        assert indexed == sorted(rels[:2]), node.log_tail()
        assert not store.abspath(rels[2]).exists()
        assert "1 unindexed instance files indexed and 1 removed" in node.log_path.read_text()
    assert not any(v in node.log_path.read_text() for v in PHI)

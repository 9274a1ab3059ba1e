"""Series completion with DCMTK storescu as the sender: each completion signal, a series split over two
associations, late instances, and routing rules on real series."""

from __future__ import annotations

import time
from pathlib import Path

import peers
import pydicom
import pytest
from nodeproc import NodeProcess
from sqlalchemy import select

from dicom_ai.cache.db import Job, Series, open_index

pytestmark = pytest.mark.integration
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
NO_WORKER = {"worker": {"poll_seconds": 3600}}  # jobs stay queued: routing is what is tested


_copy = peers.copy_series


def _send(node: NodeProcess, files) -> None:
    done = peers.storescu("127.0.0.1", node.port, [str(f) for f in files], aec=node.ae_title)
    assert done.returncode == 0, done.stdout + done.stderr


def _wait_complete(node: NodeProcess, series_uid: str, timeout: float) -> Series:
    sessions = open_index(f"sqlite:///{node.workdir / 'var' / 'index.sqlite'}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as s:
            series = s.scalar(select(Series).where(Series.series_instance_uid == series_uid))
            if series is not None and series.state == "complete":
                s.expunge(series)
                return series
        time.sleep(0.2)
    raise AssertionError(f"series not complete after {timeout} s:\n{node.log_tail()}")


def _jobs(node: NodeProcess) -> list[Job]:
    return node.rows(Job)


@pytest.fixture
def crlm(shared_data) -> Path:
    return shared_data / "ct_abdomen_CRLM-CT-1006" / "image"


def test_expected_count_completes_without_waiting_for_the_idle_timer(tmp_path, dcmtk, crlm):
    files = _copy(crlm, tmp_path / "src", NumberOfSeriesRelatedInstances=51)
    with NodeProcess(tmp_path / "node", stable_seconds=600, extra=NO_WORKER) as node:
        _send(node, files)
        series = _wait_complete(node, pydicom.dcmread(files[0]).SeriesInstanceUID, timeout=30)
    assert series.completion_signal == "expected_count"
    assert series.expected_instances == 51


def test_association_release_completes_a_whole_series(tmp_path, dcmtk, crlm):
    with NodeProcess(tmp_path / "node", stable_seconds=600, extra=NO_WORKER) as node:
        _send(node, [crlm])
        uid = pydicom.dcmread(next(crlm.iterdir())).SeriesInstanceUID
        series = _wait_complete(node, uid, timeout=30)
        jobs = _jobs(node)
    assert series.completion_signal == "association_release"
    assert len(jobs) == 1 and "51 images" not in series.routing_note  # the note lists rules


@pytest.mark.parametrize("receivers", [1, 2])
def test_a_release_is_acted_on_when_its_grace_ends_not_at_the_next_tick(tmp_path, dcmtk, crlm, receivers):
    """The receiver that records an A-RELEASE (the node's own process, or a receiver process)
    tells the node, which looks at the series again once the release grace is over: with the
    interval tick 30 s apart, the series is complete within seconds of the release."""
    extra = {**NO_WORKER, "node": {"receivers": receivers},
             "completion": {"check_interval_seconds": 30, "release_grace_seconds": 0.5}}
    with NodeProcess(tmp_path / "node", stable_seconds=600, extra=extra) as node:
        _send(node, [crlm])
        released = time.monotonic()
        uid = pydicom.dcmread(next(crlm.iterdir())).SeriesInstanceUID
        series = _wait_complete(node, uid, timeout=20)
        waited = time.monotonic() - released
    assert series.completion_signal == "association_release"
    assert waited < 10, f"complete {waited:.1f} s after the release"


def test_series_split_over_two_associations_is_processed_once_whole(tmp_path, dcmtk, crlm):
    files = sorted(crlm.iterdir())
    with NodeProcess(tmp_path / "node", stable_seconds=4, extra=NO_WORKER) as node:
        _send(node, files[:25])  # Instance Numbers 29..53: contiguous, evenly spaced on their own
        _send(node, files[25:])
        uid = pydicom.dcmread(files[0]).SeriesInstanceUID
        series = _wait_complete(node, uid, timeout=60)
        time.sleep(2)  # a second completion would have queued a second job by now
        jobs = _jobs(node)
        log = node.log_path.read_text()
    assert series.completion_signal == "stable_seconds", log
    assert "instances from 2 associations" in log
    assert len(jobs) == 1, [j.id for j in jobs]
    assert "series %s complete (51 images" % uid in log


def test_late_instance_reruns_and_results_stay_in_the_same_result_series(tmp_path, dcmtk, orthanc, crlm):
    files = sorted(crlm.iterdir())
    dest = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    with NodeProcess(tmp_path / "node", destinations=dest, stable_seconds=3) as node:
        _send(node, files[:-1])
        first = _wait_results(orthanc, study_uid, node, n_seg=1)
        _send(node, files[-1:])  # the late instance
        second = _wait_results(orthanc, study_uid, node, n_seg=2)
        jobs = _jobs(node)
    assert [j.state for j in jobs] == ["done", "done"]
    seg_series = {i["series_instance_uid"] for i in second if i["sop_class_uid"] == SEG}
    assert len(seg_series) == 1  # the re-run's SEG joined the first one's series
    old = {i["sop_instance_uid"] for i in first if i["sop_class_uid"] == SEG}
    new = [i for i in second if i["sop_class_uid"] == SEG and i["sop_instance_uid"] not in old]
    assert len(new) == 1
    seg = pydicom.dcmread(orthanc.download_instance(new[0]["id"], tmp_path / "new-seg.dcm"))
    referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for r in s.ReferencedInstanceSequence}
    assert pydicom.dcmread(files[-1]).SOPInstanceUID in referenced and len(referenced) == 51


def _wait_results(pacs, study_uid, node, n_seg, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pacs.instances_of_study(study_uid)
        if sum(i["sop_class_uid"] == SEG for i in got) >= n_seg:
            return got
        time.sleep(2)
    raise AssertionError(f"{n_seg} SEG not in Orthanc after {timeout} s:\n{node.log_tail()}")


def test_rules_on_real_series(tmp_path, dcmtk, shared_data, crlm):
    """Every rule condition decides on series sent by storescu; `rules test` agrees."""
    lidc = peers.LIDC_SERIES
    lidc_header = pydicom.dcmread(next(lidc.iterdir()), stop_before_pixels=True)
    # CRLM (5 mm, DERIVED\SECONDARY) as a second series of the LIDC study (1 mm): the same
    # study, so the same patient (the receiver refuses a study that mixes patients)
    patient = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")
    _copy(crlm, tmp_path / "crlm")
    for f in (tmp_path / "crlm").iterdir():
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = lidc_header.StudyInstanceUID
        for keyword in patient:
            setattr(ds, keyword, lidc_header.get(keyword, ""))
        ds.save_as(f)
    crlm = tmp_path / "crlm"
    rules = [
        # each passes on LIDC (CT, CHEST, 1 mm axial, 275 images, from STORESCU) and fails on CRLM
        {"name": "modality", "model": "dicom-ai-lung", "modalities": ["CT"], "sop_classes": ["1.2.3"],
         "combine": "any"},
        {"name": "thin", "model": "dicom-ai-lung", "slice_thickness_mm": [0.5, 2.0], "priority": 5},
        {"name": "many", "model": "dicom-ai-lung", "min_instances": 100, "max_instances": 400,
         "orientations": ["AXIAL"], "calling_ae_titles": ["STORESCU"], "body_parts": ["CHEST"]},
        {"name": "described", "model": "dicom-ai-lung", "series_description": "^$", "modalities": ["MR"]},
        {"name": "off", "model": "dicom-ai-lung", "enabled": False},
        {"name": "thinnest", "model": "dicom-ai-lung", "min_instances": 20, "select": "thinnest"},
        {"name": "no-derived", "model": "dicom-ai-lung", "exclude_image_types": ["DERIVED"]},
    ]
    with NodeProcess(tmp_path / "node", stable_seconds=600, extra={**NO_WORKER, "rules": rules}) as node:
        _send(node, [lidc])
        _send(node, [crlm])
        notes = {}
        for folder in (lidc, crlm):
            uid = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
            notes[folder] = _wait_complete(node, uid, timeout=60).routing_note
        jobs = _jobs(node)
        listed = node.cli("jobs", "list")
        shown = node.cli("jobs", "show", "1")
        tested = node.cli("rules", "test", str(crlm))
        one_file = node.cli("rules", "test", str(sorted(lidc.iterdir())[0]))
        lidc_uid = pydicom.dcmread(next(lidc.iterdir()), stop_before_pixels=True).SeriesInstanceUID
        cached = node.cli("rules", "test", lidc_uid)
    lidc_note, crlm_note = notes[lidc], notes[crlm]
    assert "rule 'thin': queued job" in lidc_note  # highest priority fires first
    assert "rule 'modality': already queued by rule 'thin'" in lidc_note
    assert "rule 'many': already queued" in lidc_note
    assert "rule 'described': not run, series description '' matches /^$/" not in lidc_note
    assert "modality CT in ['MR']" in lidc_note  # 'described' fails on its modality
    assert "slice thickness 5.0 mm in [0.5, 2.0]" in crlm_note
    assert "51 images >= 100" in crlm_note
    assert "none of" not in crlm_note  # CRLM is CT: 'modality' (any) fires on it
    assert "off" not in lidc_note + crlm_note
    assert [j.rule for j in jobs] == ["thin", "modality"] and [j.priority for j in jobs] == [5, 0]
    assert "thin" in listed.stdout and "modality" in listed.stdout, listed.stdout
    assert "rule: thin, priority 5" in shown.stdout, shown.stdout
    assert "rule 'described': not run, modality CT in ['MR']" in shown.stdout, shown.stdout
    assert tested.returncode == 0 and "slice thickness 5.0 mm" in tested.stdout, tested.stdout + tested.stderr
    assert "disabled" in tested.stdout
    assert "a thinner series of the study passes the rule" in crlm_note
    assert "rule 'no-derived': not run, image type DERIVED\\SECONDARY\\PROCESSED excluded" in crlm_note
    assert "rule 'thinnest': already queued" in lidc_note and "rule 'no-derived': already queued" in lidc_note
    assert "1 images (+0 localizers)" in one_file.stdout and "1 images >= 100" in one_file.stdout, one_file.stdout
    assert "275 images" in cached.stdout and "yes" in cached.stdout, cached.stdout + cached.stderr


def test_a_sender_that_stalls_mid_series_is_waited_for_until_it_releases_or_aborts(tmp_path, crlm):
    """The idle timer (2 s here) does not complete a series while the association sending it
    is open: a sender that pauses 5 s in the middle of a series gets it processed whole once it
    releases. After an A-ABORT the idle timer completes what arrived."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    whole = _copy(crlm, tmp_path / "whole")
    cut = _copy(crlm, tmp_path / "cut")
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage, pydicom.dcmread(whole[0]).file_meta.TransferSyntaxUID)
    with NodeProcess(tmp_path / "node", stable_seconds=2, extra=NO_WORKER) as node:
        sessions = open_index(node.database_url)

        def state(files) -> str | None:
            with sessions() as s:
                uid = pydicom.dcmread(files[0]).SeriesInstanceUID
                return s.scalar(select(Series.state).where(Series.series_instance_uid == uid))

        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        assert assoc.is_established
        for f in whole[:20]:
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0x0000
        time.sleep(5)  # the sender stalls, its association open
        assert state(whole) == "receiving", node.log_tail()
        for f in whole[20:]:
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0x0000
        assoc.release()
        series = _wait_complete(node, pydicom.dcmread(whole[0]).SeriesInstanceUID, timeout=30)

        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        for f in cut[:10]:
            assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0x0000
        assoc.abort()
        aborted = _wait_complete(node, pydicom.dcmread(cut[0]).SeriesInstanceUID, timeout=30)
        log = node.log_path.read_text()
    assert series.completion_signal == "association_release"
    assert "series %s complete (51 images" % series.series_instance_uid in log
    assert aborted.completion_signal == "stable_seconds"
    assert "series %s complete (10 images" % aborted.series_instance_uid in log

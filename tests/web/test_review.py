"""Clinician review through the REST API, on real results sent to a real Orthanc: results of a
job under review are held; a reviewer approves (the SR arrives VERIFIED, naming the reviewer)
or rejects (nothing arrives; what was sent is withdrawn with a rejection note); a reader
cannot decide (403); a session POST without the CSRF token is refused (403); every decision
is in the audit trail."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from fastapi.testclient import TestClient

from dicom_ai.cache.db import Delivery, Job, Result, Review, Series, open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.export.outbox import deliver_due
from dicom_ai.web.app import create_app
from dicom_ai.web.auth import add_user

from ..worker.conftest import file_and_index, run_test_job
from ..worker.test_worker_plausibility import Air, _package

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def site(index_url, tmp_path, lidc_series, orthanc):
    settings = load_settings(None, node={"database_url": index_url, "data_dir": str(tmp_path / "var"), "ae_title": "DICOMAI"},
                             worker={"device": "cpu"}, review={"organization": "Test Hospital Radiology"},
                             destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                                            "port": orthanc.dicom_port}])
    store, sessions = FileStore(settings.node.data_dir), open_index(settings.database_url)
    slices = sorted(lidc_series, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    package = _package(tmp_path / "air", Air())
    for i in range(6):
        file_and_index(sessions, store, pydicom.dcmread(slices[150 + i]), i + 1, patient_id="P6",
                       patient_name="REVIEW^TEST", accession="ACC6")
    with sessions.begin() as s:
        s.query(Series).one().state = "complete"
    add_user(sessions, "ray", "reviewer", "review-pass")
    add_user(sessions, "rad", "reader", "read-pass")

    def run(review: str = "awaiting") -> int:
        return run_test_job(settings, sessions, store, package, review=review)

    client = TestClient(create_app(settings, sessions))
    return settings, sessions, store, orthanc, run, client


def _login(client, name, password) -> None:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    r = client.post("/login", data={"username": name, "password": password, "next": "/", "csrf_token": token},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    client.headers["X-CSRF-Token"] = re.search(r'<meta name="csrf-token" content="([^"]+)">',
                                               client.get("/").text).group(1)


def _stored(orthanc, ids: dict[str, str] | None = None) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of what Orthanc holds (and into ``ids`` its Orthanc id)."""
    out = {}
    for i in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{i}/tags?simplify")
        out[tags["SOPInstanceUID"]] = tags["SOPClassUID"]
        if ids is not None:
            ids[tags["SOPInstanceUID"]] = i
    return out


@pytest.mark.integration
def test_approved_results_go_out_verified(site) -> None:
    settings, sessions, store, orthanc, run, client = site
    job_id = run()
    with sessions() as s:
        assert {d.state for d in s.query(Delivery)} == {"held"}
    assert deliver_due(sessions, store, settings) == 0 and _stored(orthanc) == {}

    _login(client, "ray", "review-pass")
    page = client.get(f"/studies/{_study_uid(sessions)}").text
    assert "Awaiting review" in page and 'class="approve"' in page
    r = client.post(f"/api/jobs/{job_id}/review", json={"decision": "approve", "comment": "lungs fine"})
    assert r.status_code == 200, r.text
    assert r.json()["review"] == "approved"
    assert deliver_due(sessions, store, settings) == 2
    ids: dict[str, str] = {}
    stored = _stored(orthanc, ids)
    (sr_uid,) = [u for u, c in stored.items() if c == SR_CLASS]
    sr = pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{ids[sr_uid]}/file")))
    assert sr.VerificationFlag == "VERIFIED"
    observer = sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName).rstrip("^") == "ray"
    assert observer.VerifyingOrganization == "Test Hospital Radiology"
    with sessions() as s:
        (review,) = s.query(Review).all()
        assert (review.job_fk, review.who, review.role, review.decision, review.comment) == \
            (job_id, "ray", "reviewer", "approve", "lungs fine")
        assert s.query(Result).filter(Result.kind == "SR").one().sop_instance_uid == sr_uid
    again = client.post(f"/api/jobs/{job_id}/review", json={"decision": "approve"})
    assert again.status_code == 409  # decided already


def _study_uid(sessions) -> str:
    with sessions() as s:
        return s.query(Series).one().study.study_instance_uid


@pytest.mark.integration
def test_rejected_results_never_arrive(site) -> None:
    settings, sessions, store, orthanc, run, client = site
    job_id = run()
    _login(client, "ray", "review-pass")
    r = client.post(f"/api/jobs/{job_id}/review", json={"decision": "reject", "comment": "left lung missed"})
    assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
    assert deliver_due(sessions, store, settings) == 0
    assert _stored(orthanc) == {}
    with sessions() as s:
        assert {d.state for d in s.query(Delivery)} == {"rejected"}
        assert [(x.decision, x.comment) for x in s.query(Review)] == [("reject", "left lung missed")]
    worklist = client.get("/api/studies", params={"status": "rejected"}).json()
    assert len(worklist) == 1


@pytest.mark.integration
def test_a_result_rejected_after_it_was_sent_is_withdrawn(site) -> None:
    settings, sessions, store, orthanc, run, client = site
    job_id = run(review="")  # no review asked: sent at once
    assert deliver_due(sessions, store, settings) == 2
    sent = set(_stored(orthanc))
    _login(client, "ray", "review-pass")
    assert client.post(f"/api/jobs/{job_id}/review", json={"decision": "reject"}).status_code == 200
    assert deliver_due(sessions, store, settings) == 1  # the rejection note
    note = {u for u, c in _stored(orthanc).items() if c == "1.2.840.10008.5.1.4.1.1.88.59"}
    assert len(note) == 1
    with sessions() as s:
        kos = s.query(Result).filter(Result.kind == "KOS").one()
        listed = {i.ReferencedSOPInstanceUID for study in pydicom.dcmread(store.abspath(kos.path))
                  .CurrentRequestedProcedureEvidenceSequence for series in study.ReferencedSeriesSequence
                  for i in series.ReferencedSOPSequence}
    assert listed == sent


@pytest.mark.integration
def test_only_reviewers_decide_and_only_with_the_csrf_token(site) -> None:
    _, sessions, _, _, run, client = site
    job_id = run()
    _login(client, "rad", "read-pass")
    assert client.post(f"/api/jobs/{job_id}/review", json={"decision": "approve"}).status_code == 403
    assert 'class="approve"' not in client.get(f"/studies/{_study_uid(sessions)}").text
    client.post("/logout", data={"csrf_token": client.headers["X-CSRF-Token"]})
    _login(client, "ray", "review-pass")
    del client.headers["X-CSRF-Token"]
    assert client.post(f"/api/jobs/{job_id}/review", json={"decision": "approve"}).status_code == 403
    with sessions() as s:
        assert s.query(Review).count() == 0 and s.get(Job, job_id).review == "awaiting"

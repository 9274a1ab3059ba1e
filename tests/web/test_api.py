"""Every page and REST endpoint, refused access, /metrics, users; FastAPI's client."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import numpy as np
import peers
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dicom_ai.cache.db import Delivery, Job, Result, Series, open_index
from dicom_ai.cache.index import InstanceMeta, count, index_instance
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.web.app import create_app
from dicom_ai.web.auth import add_user

CT = "1.2.840.10008.5.1.4.1.1.2"


LUNG_FINDINGS = {"Left lung": {"volume_ml": 1850.0, "mean_hu": -808.0},
                 "Right lung": {"volume_ml": 913.0, "mean_hu": -790.0}}


def _study(sessions, store, k, name, date, state="done", delivery="delivered", n=3, findings=None):
    """A study with one CT series of ``n`` real LIDC slices, a job (``findings``, by default
    LUNG_FINDINGS) and its SEG delivery."""
    files = sorted(peers.LIDC_SERIES.glob("*.dcm"))[100:100 + n]
    rels = []
    for i, f in enumerate(files):
        meta = InstanceMeta(f"P{k}", name, f"1.2.{k}", date, f"ACC{k}", "CT CHEST", f"1.2.{k}.1", "CT",
                            "CHEST", "axial", 1, CT, f"1.2.{k}.1.{i}", i + 1, "1.2.840.10008.1.2")
        rel = store.instance_relpath(meta.study_uid, meta.series_uid, meta.sop_instance_uid)
        store.write(rel, f.read_bytes())
        rels.append(rel)
        index_instance(sessions, meta, rel, f.stat().st_size, "CT1")
    with sessions.begin() as s:
        series = s.query(Series).filter_by(series_instance_uid=f"1.2.{k}.1").one()
        series.state, series.completion_signal = "complete", "association_release"
        series.completed_at = series.last_received_at
        job = Job(series=series, model_name="dicom-ai-lung", model_version="1.0.0", model_path="/m",
                  state=state, findings=LUNG_FINDINGS if findings is None else findings,
                  timings={"inference": 1.1}, reason="" if state == "done" else "volume: gantry tilt")
        s.add(job)
        s.flush()
        if state == "done":
            result = Result(job=job, kind="SEG", sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                            sop_instance_uid=f"1.2.{k}.9", series_instance_uid=f"1.2.{k}.8", path="x")
            s.add(result)
            s.add(Delivery(result=result, destination="pacs", state=delivery, last_status="0x0000 Success"))
            mask = np.zeros((n, 512, 512), np.uint8)
            mask[:, 100:200, 100:200] = 1
            buf = io.BytesIO()
            np.savez_compressed(buf, mask=mask, paths=np.array(rels), labels=np.array([[1, 255, 0, 0]]))
            store.write(f"results/{job.id}/mask.npz", buf.getbuffer())
        return job.id


@pytest.fixture
def web(index_url, tmp_path):
    settings = load_settings(None, node={"database_url": index_url, "data_dir": str(tmp_path / "var")},
                             destinations=[{"name": "pacs", "kind": "folder", "path": str(tmp_path / "out")}])
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    jobs = [_study(sessions, store, 1, "DOE^JANE", "20240102"),
            _study(sessions, store, 2, "ROE^RICHARD", "20240305", delivery="failed"),
            _study(sessions, store, 3, "POE^EDGAR", "20230101", state="failed")]
    count(sessions, "instances_received")
    add_user(sessions, "rad", "reader", "read-pass")
    add_user(sessions, "boss", "admin", "admin-pass")
    client = TestClient(create_app(settings, sessions))
    return client, jobs, settings


def _form_token(client):
    """The CSRF token of the login form (and of the client's session)."""
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)


def _login(client, name, password):
    """Log in with the login form; later requests carry the new session's CSRF token."""
    r = client.post("/login", data={"username": name, "password": password, "next": "/",
                                    "csrf_token": _form_token(client)}, follow_redirects=False)
    assert r.status_code == 303, r.text
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', client.get("/").text).group(1)
    client.headers["X-CSRF-Token"] = token
    return token


API_GETS = ["/api/studies", "/api/studies/1.2.1", "/api/series/1.2.1.1", "/api/jobs", "/api/jobs/1",
            "/api/results", "/api/deliveries", "/api/models", "/api/jobs/1/viewer", "/api/jobs/1/slices/1.png"]
API_POSTS = ["/api/jobs/1/rerun", "/api/deliveries/1/resend", "/api/destinations/pacs/check"]


def test_nothing_but_metrics_and_health_without_login(web):
    client, _, _ = web
    for path in API_GETS:
        assert client.get(path).status_code == 401, path
    for path in API_POSTS:
        assert client.post(path).status_code == 401, path
    for page in ("/", "/studies/1.2.1", "/admin"):
        r = client.get(page, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), page
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/metrics").status_code == 200
    assert client.get("/api/studies", auth=("rad", "wrong")).status_code == 401
    bad = client.post("/login", data={"username": "rad", "password": "nope", "csrf_token": _form_token(client)})
    assert bad.status_code == 401 and "wrong name or password" in bad.text
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = client.post("/login", data={"username": "rad", "password": "read-pass", "next": target,
                                        "csrf_token": _form_token(client)}, follow_redirects=False)
        assert r.headers["location"] == "/", target  # no open redirect after login


def test_reader_sees_everything_and_may_not_act(web):
    client, _, _ = web
    _login(client, "rad", "read-pass")
    for path in API_GETS:
        assert client.get(path).status_code == 200, path
    for path in API_POSTS:
        assert client.post(path).status_code == 403, path
    assert client.get("/admin").status_code == 403
    assert client.get("/api/studies", auth=("rad", "read-pass")).status_code == 200  # basic auth too


def test_worklist_rows_statuses_findings_filters_and_sort(web):
    client, _, _ = web
    _login(client, "rad", "read-pass")
    rows = {r["patient_id"]: r for r in client.get("/api/studies").json()}
    assert rows["P1"]["ai"][0]["status"] == "delivered" and not rows["P1"]["attention"]
    assert rows["P1"]["ai"][0]["findings_text"] == "Left lung 1850 mL, Right lung 913 mL"
    assert rows["P2"]["ai"][0]["status"] == "delivery failed" and rows["P2"]["attention"]
    assert rows["P3"]["ai"][0]["status"] == "failed" and rows["P3"]["attention"]
    page = client.get("/").text
    assert "JANE" in page and "Left lung 1850 mL" in page and "delivery failed" in page
    ids = lambda **q: [r["patient_id"] for r in client.get("/api/studies", params=q).json()]
    assert ids(q="roe") == ["P2"]
    assert ids(q="ACC3") == ["P3"]
    assert sorted(ids(date_from="2024-01-01")) == ["P1", "P2"]
    assert ids(date_to="20231231") == ["P3"]
    assert ids(modality="MR") == [] and len(ids(modality="ct")) == 3
    assert ids(status="delivery failed") == ["P2"]
    assert ids(sort="date", desc=False) == ["P3", "P1", "P2"]
    assert ids(sort="patient", desc=False) == ["P1", "P3", "P2"]
    assert ids(sort="status")[-1] == "P1"  # studies needing attention first


def test_study_page_viewer_measurements_timeline(web):
    client, jobs, _ = web
    _login(client, "rad", "read-pass")
    page = client.get("/studies/1.2.1").text
    assert 'class="viewer"' in page and "1850" in page and "Timeline" in page
    study = client.get("/api/studies/1.2.1").json()
    events = [e["event"] for e in study["timeline"]]
    assert any("first instance received" in e for e in events)
    assert any("complete (association_release)" in e for e in events)
    assert any("SEG to pacs: delivered" in e for e in events)
    info = client.get(f"/api/jobs/{jobs[0]}/viewer").json()
    assert info["n_slices"] == 3 and "lung" in info["presets"]
    plain = Image.open(io.BytesIO(client.get(f"/api/jobs/{jobs[0]}/slices/1.png?overlay=false").content))
    over = Image.open(io.BytesIO(client.get(f"/api/jobs/{jobs[0]}/slices/1.png").content))
    a, b = np.asarray(plain), np.asarray(over)
    assert a.shape == (512, 512, 3)
    assert (a[150, 150] != b[150, 150]).any() and (a[400, 400] == b[400, 400]).all()  # red only in the mask
    bone = np.asarray(Image.open(io.BytesIO(client.get(f"/api/jobs/{jobs[0]}/slices/1.png?preset=bone&overlay=false").content)))
    assert (bone != a).any()
    assert client.get(f"/api/jobs/{jobs[0]}/slices/99.png").status_code == 404
    assert client.get(f"/api/jobs/{jobs[2]}/viewer").status_code == 404  # failed job: no mask
    assert client.get("/api/studies/9.9").status_code == 404


def test_implausible_result_puts_the_study_on_attention_with_the_reason(web):
    """A done job whose segmentation is implausible: its findings as the worker writes them
    (measure_labels, check_plausibility and segmentation_findings on three adjacent real LIDC
    slices and a mask like _study's), the study on attention with the reasons in the API and on
    the pages."""
    from dicom_ai.infer.volume import load_series
    from dicom_ai.report.measure import measure_labels
    from dicom_ai.report.plausibility import check_plausibility, with_adult_lung_plausibility
    from dicom_ai.worker import segmentation_findings

    from ..report.conftest import make_manifest

    client, _, settings = web
    manifest = with_adult_lung_plausibility(make_manifest(values=(2, 1), version="2.0.0"))
    import pydicom

    files = sorted(peers.LIDC_SERIES.glob("*.dcm"),
                   key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    volume = load_series(files[100:103])
    mask = np.zeros(volume.shape, np.uint8)
    mask[:, 100:200, 100:200] = 1  # an 18 mL "left lung" (3 x 100 x 100 voxels), no right lung
    issues = check_plausibility(measure_labels(volume, mask, manifest), manifest)
    findings = segmentation_findings(measure_labels(volume, mask, manifest), issues)
    too_small = "Left lung volume 18 mL is below the plausible range 300 to 6000 mL"
    not_found = "Right lung not found (plausible volume 300 to 6000 mL)"
    assert findings == {"Right lung": {"volume_ml": 0.0, "mean_hu": None, "implausible": [not_found]},
                        "Left lung": {"volume_ml": 18.3, "mean_hu": findings["Left lung"]["mean_hu"],
                                      "implausible": [too_small]}}
    sessions, store = open_index(settings.database_url), FileStore(settings.node.data_dir)
    job_id = _study(sessions, store, 4, "LOE^LINDA", "20240401", findings=findings)

    _login(client, "rad", "read-pass")
    rows = {r["patient_id"]: r for r in client.get("/api/studies").json()}
    (ai,) = rows["P4"]["ai"]
    assert rows["P4"]["attention"] and ai["attention"] and ai["status"] == "delivered"
    assert ai["attention_reasons"] == [not_found, too_small]
    assert rows["P4"]["attention_reasons"] == [f"dicom-ai-lung 1.0.0: {not_found}", f"dicom-ai-lung 1.0.0: {too_small}"]
    assert ai["findings_text"] == f"Right lung 0 mL, Left lung 18 mL (implausible: {not_found}; {too_small})"
    assert ai["findings"]["Left lung"]["volume_ml"] == 18.3  # the old keys are all still there
    assert not rows["P1"]["attention"] and rows["P1"]["attention_reasons"] == []
    assert [r["patient_id"] for r in client.get("/api/studies", params={"sort": "status"}).json()][-1] == "P1"
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["attention"] and job["attention_reasons"] == [not_found, too_small]
    page = client.get("/").text
    assert f"Left lung 18 mL (implausible: {not_found}; {too_small})" in page
    assert f'title="needs attention: dicom-ai-lung 1.0.0: {not_found}; dicom-ai-lung 1.0.0: {too_small}"' in page
    study = client.get("/studies/1.2.4").text
    assert "needs attention" in study and f'<li class="flag">dicom-ai-lung 1.0.0: {too_small}</li>' in study
    assert f'<span class="flag">implausible</span>: {too_small}' in study  # in the measurements table


def test_admin_acts(web, tmp_path):
    client, jobs, _ = web
    _login(client, "boss", "admin-pass")
    assert "Failed deliveries" in client.get("/admin").text
    again = client.post(f"/api/jobs/{jobs[0]}/rerun")
    assert again.status_code == 201
    assert client.get(f"/api/jobs/{again.json()['job_id']}").json()["state"] == "queued"
    failed = client.get("/api/deliveries", params={"state": "failed"}).json()
    assert len(failed) == 1
    assert client.post(f"/api/deliveries/{failed[0]['id']}/resend").json()["state"] == "pending"
    check = client.post("/api/destinations/pacs/check").json()
    assert check["ok"] == "yes" and "writable" in check["detail"]
    assert "writable" in client.get("/admin").text  # the last check is shown


def test_admin_page_shows_the_model_registry_and_its_history(web):
    from dicom_ai.models.registry import enable, seed_shipped

    client, _, settings = web
    sessions = open_index(settings.database_url)  # the app's index file
    seed_shipped(sessions, settings)
    enable(sessions, "dicom-ai-lung@1.0.0", "boss")
    _login(client, "boss", "admin-pass")
    page = client.get("/admin").text
    assert re.search(r"<td>dicom-ai-lung</td><td>1.0.0</td><td>segmentation</td><td>monai</td>\s*<td>active</td>", page), page
    assert re.search(r"<td>boss</td><td>enable</td>\s*<td>dicom-ai-lung 1.0.0</td>", page)
    assert re.search(r"<td>dicom-ai</td><td>add</td>\s*<td>dicom-ai-lung 1.0.0</td><td>[^<]*shipped with dicom-ai", page)


def test_metrics(web):
    client, _, _ = web
    text = client.get("/metrics").text
    assert "dicom_ai_instances_received_total 10.0" in text  # 9 indexed + 1 counted by hand
    assert 'dicom_ai_jobs{state="done"} 2.0' in text and 'dicom_ai_jobs{state="failed"} 1.0' in text
    assert 'dicom_ai_deliveries{state="failed"} 1.0' in text
    assert 'dicom_ai_series_completed_total{signal="association_release"} 3.0' in text
    assert 'dicom_ai_inference_seconds_bucket{le="2.0",model="dicom-ai-lung"} 2.0' in text
    assert "dicom_ai_free_disk_bytes" in text and "dicom_ai_associations_open" in text


def test_openapi_documents_the_api(web):
    client, _, _ = web
    assert client.get("/openapi.json", follow_redirects=False).status_code == 303  # login first
    assert client.get("/docs").status_code == 404
    _login(client, "rad", "read-pass")
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/studies", "/api/series/{series_uid}", "/api/jobs/{job_id}", "/api/results",
                 "/api/deliveries", "/api/models", "/metrics", "/health"):
        assert path in paths, path


@pytest.mark.integration
def test_users_add_reads_the_password_from_stdin(tmp_path):
    from dicom_ai.web.auth import authenticate

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    run = lambda *args, stdin: subprocess.run([sys.executable, "-m", "dicom_ai.cli", "users", "add", *args,
                                               "--config", str(cfg)], input=stdin, capture_output=True, text=True)
    assert run("alice", "--role", "admin", stdin="s3cret\n").returncode == 0
    assert run("bob", "--role", "owner", stdin="x\n").returncode == 2
    sessions = open_index(f"sqlite:///{tmp_path / 'var' / 'index.sqlite'}")
    assert authenticate(sessions, "alice", "s3cret") == ("alice", "admin")
    assert authenticate(sessions, "alice", "S3cret") is None

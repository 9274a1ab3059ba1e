"""Clinician review in a real headless browser (Debian chromium driven by Selenium), on a node
started by the test with the shipped lung model marked ``review = true`` and a real Orthanc as
its PACS: two real CT studies (LIDC-IDRI-0003, and Lung-PET-CT-Dx-A0001 in JPEG-LS) arrive, both wait for review; a reviewer opens the first, sees the
overlay and the measurements, approves it with a comment, and its SEG and SR arrive in Orthanc
with the SR VERIFIED by that reviewer; the reviewer rejects the second, and nothing of it
arrives. A reader sees no review buttons, and a POST from the reader's session is refused (403).
Screenshots are kept in the test's folder (and copied to $DICOM_AI_SCREENSHOTS when set)."""

from __future__ import annotations

import io
import time

import peers
import pydicom
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Delivery, Job

from .test_browser import _log_in, _shot, _wait, browser  # noqa: F401  (browser: the fixture)

pytestmark = pytest.mark.integration
FIRST = peers.SHARED_DATA / "ct_chest_LIDC-IDRI-0003" / "image"  # 140 slices
SECOND = peers.SHARED_DATA / "ct_chest_Lung-PET-CT-Dx-A0001" / "image_5mm_kernel_B"  # 64, JPEG-LS
MODEL = peers.REPO_ROOT / "models" / "lung-unet-2d"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"

# the reader's attempt, from the page itself with the session's CSRF token: the answer's status
POST_AS_PAGE = """
const done = arguments[arguments.length - 1];
const csrf = document.querySelector('meta[name="csrf-token"]').content;
fetch(`/api/jobs/${arguments[0]}/review`, {method: 'POST', credentials: 'same-origin',
  headers: {'X-CSRF-Token': csrf, 'Content-Type': 'application/json'},
  body: JSON.stringify({decision: 'approve'})}).then(r => done(r.status));
"""


def _study_row(driver, patient: str):
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr[data-study]")
    return next((r for r in rows if patient in r.text), None)


def _patient_id(folder) -> str:
    return str(pydicom.dcmread(next(p for p in sorted(folder.iterdir()) if p.is_file()),
                               stop_before_pixels=True).PatientID)


def _orthanc_study_instances(orthanc, patient_id: str) -> list[dict]:
    out = []
    for i in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{i}/tags?simplify")
        if tags.get("PatientID") == patient_id:
            out.append({"id": i, **tags})
    return out


def test_reviewer_approves_one_study_and_rejects_another(tmp_path, dcmtk, orthanc, browser) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    pacs = {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    extra = {"models": [{"path": str(MODEL), "review": True}], "review": {"organization": "Test Radiology"}}
    with NodeProcess(tmp_path / "node", stable_seconds=2, destinations=[pacs], extra=extra) as node:
        for name, role, password in (("ray", "reviewer", "reviews-lungs"), ("rad", "reader", "reads-lungs")):
            assert node.cli("users", "add", name, "--role", role, input=password + "\n").returncode == 0
        for folder, propose in ((FIRST, "jpegls"), (SECOND, "jpegls")):  # both JPEG-LS lossless
            sent = peers.storescu("127.0.0.1", node.port, folder, aec=node.ae_title, propose=propose)
            assert sent.returncode == 0, sent.stderr
        _wait(lambda: sorted(j.state for j in node.rows(Job)) == ["done", "done"], 600, "both jobs done")
        assert {j.review for j in node.rows(Job)} == {"awaiting"}
        time.sleep(1.5)  # a few outbox ticks: nothing may leave while held
        assert orthanc.get("/instances") == []
        assert {d.state for d in node.rows(Delivery)} == {"held"}

        base = f"http://127.0.0.1:{node.web_port}"
        _log_in(browser, base, "ray", "reviews-lungs")
        browser.get(base + "/?status=awaiting+review")
        rows = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr[data-study]"), 10, "rows")
        assert len(rows) == 2 and all("awaiting review" in r.text for r in rows)
        _shot(browser, tmp_path, "worklist-awaiting-review.png")

        # approve the first study
        first_patient = _patient_id(FIRST)
        _study_row(browser, first_patient).find_element(By.CSS_SELECTOR, "a").click()
        panel = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".review-panel.awaiting"), 10, "review panel")[0]
        image = browser.find_element(By.CSS_SELECTOR, ".viewer img.image")
        _wait(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image),
              20, "slice shown")
        assert "Left lung" in browser.find_element(By.CSS_SELECTOR, ".measurements").text
        panel.find_element(By.CSS_SELECTOR, ".review-comment").send_keys("Both lungs complete.")
        _shot(browser, tmp_path, "review.png")
        panel.find_element(By.CSS_SELECTOR, ".approve").click()
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".review-panel.approved"), 20, "approved")
        assert "approved by ray (reviewer): Both lungs complete." in browser.find_element(
            By.CSS_SELECTOR, ".review-panel .decision").text
        first = _wait(lambda: (got := _orthanc_study_instances(orthanc, first_patient)) and len(got) == 2 and got,
                      60, "SEG and SR in Orthanc")
        (sr_row,) = [r for r in first if r["SOPClassUID"] == SR_CLASS]
        sr = pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{sr_row['id']}/file")))
        assert sr.VerificationFlag == "VERIFIED"
        observer = sr.VerifyingObserverSequence[0]
        assert str(observer.VerifyingObserverName).rstrip("^") == "ray"
        assert observer.VerifyingOrganization == "Test Radiology"

        # reject the second
        browser.get(base + "/")
        second_patient = _patient_id(SECOND)
        _study_row(browser, second_patient).find_element(By.CSS_SELECTOR, "a").click()
        panel = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".review-panel.awaiting"), 10, "review panel")[0]
        panel.find_element(By.CSS_SELECTOR, ".review-comment").send_keys("Segmentation leaks into the liver.")
        panel.find_element(By.CSS_SELECTOR, ".reject").click()
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".review-panel.rejected"), 20, "rejected")
        time.sleep(1.5)
        assert _orthanc_study_instances(orthanc, second_patient) == []
        rejected_job = next(j.id for j in node.rows(Job) if j.review == "rejected")
        assert {d.state for d in node.rows(Delivery) if d.result_fk and d.state != "delivered"} == {"rejected"}
        listed = node.cli("reviews", "list")
        assert listed.returncode == 0 and "Segmentation leaks" in listed.stdout and "ray" in listed.stdout

        # a reader: no buttons, and the API refuses the decision
        browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
        _wait(lambda: "/login" in browser.current_url, 10, "logged out")
        _log_in(browser, base, "rad", "reads-lungs")
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#worklist"), 10, "worklist")
        _study_row(browser, second_patient).find_element(By.CSS_SELECTOR, "a").click()
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".review-panel"), 10, "review state shown")
        assert browser.find_elements(By.CSS_SELECTOR, ".review-panel .approve, .review-panel .reject") == []
        assert browser.execute_async_script(POST_AS_PAGE, rejected_job) == 403

"""The web pages in a real headless browser (Debian chromium driven by Selenium): a real series sent
with storescu, then log in, see it done in the worklist with the lung volumes, open it, scroll
slices and see the overlay. Screenshots are kept in the test's folder (and copied to
$DICOM_AI_SCREENSHOTS when that is set)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import peers
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Job

pytestmark = pytest.mark.integration
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")

# counts pixels where the three channels differ: the grey image has none, segments have many
COLOURED = """
const img = arguments[0], c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - d[i + 2]) > 30) n++;
return n;
"""


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("Debian chromium and chromium-driver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP violations
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _shot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("DICOM_AI_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["DICOM_AI_SCREENSHOTS"]) / name)


def _wait(check, timeout: float, what: str):
    return peers.wait_for(check, timeout, what, interval=0.3)


def _csp_violations(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]


def _log_in(browser, base: str, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(base + "/")
    assert "/login" in browser.current_url  # nothing without login
    browser.find_element(By.ID, "username").send_keys(name)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "login").click()


def test_radiologist_sees_the_result_in_the_browser(tmp_path, dcmtk, lidc_series, browser):
    """... and, with the Content-Security-Policy (no inline script or style) and the CSRF
    tokens in place: no CSP violation on any page, the logout form, and an admin's button
    (a fetch() POST with the session's token) work."""
    from selenium.webdriver.common.by import By

    folder = {"name": "out", "kind": "folder", "path": str(tmp_path / "out")}
    with NodeProcess(tmp_path / "node", stable_seconds=2, destinations=[folder]) as node:
        added = node.cli("users", "add", "rad", "--role", "reader", input="lungs-are-two\n")
        assert added.returncode == 0, added.stderr
        sent = peers.storescu("127.0.0.1", node.port, peers.LIDC_SERIES, aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        _wait(lambda: [j.state for j in node.rows(Job)] == ["done"], 300, "job done")

        base = f"http://127.0.0.1:{node.web_port}"
        _log_in(browser, base, "rad", "lungs-are-two")
        row = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr[data-study]"), 10,
                    "worklist row")[0]
        assert "delivered" in row.text, row.text  # done, and written to the folder destination
        findings = row.find_element(By.CSS_SELECTOR, ".findings").text
        assert "Left lung" in findings and "Right lung" in findings and "mL" in findings, findings
        _shot(browser, tmp_path, "worklist.png")

        row.find_element(By.CSS_SELECTOR, "a").click()
        image = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".viewer img.image"), 10, "viewer")[0]
        loaded = lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
        _wait(loaded, 20, "first slice")
        index = browser.find_element(By.CSS_SELECTOR, ".viewer .index")
        first, src = int(index.text), image.get_attribute("src")
        for _ in range(3):
            browser.find_element(By.CSS_SELECTOR, ".viewer .next").click()
        assert int(index.text) == first + 3
        _wait(lambda: image.get_attribute("src") != src and loaded(), 20, "scrolled slice")
        coloured = browser.execute_script(COLOURED, image)
        assert coloured > 1000, coloured  # the lungs in their segment colours
        _shot(browser, tmp_path, "study.png")
        assert "Left lung" in browser.find_element(By.CSS_SELECTOR, ".measurements").text

        browser.find_element(By.CSS_SELECTOR, ".viewer .overlay").click()  # overlay off
        _wait(lambda: "overlay=false" in image.get_attribute("src") and loaded(), 20, "slice without overlay")
        assert browser.execute_script(COLOURED, image) == 0
        browser.get(base + "/?q=LIDC-IDRI-0314")  # a search by patient ID
        assert len(browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr[data-study]")) == 1
        assert _csp_violations(browser) == []
        browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
        _wait(lambda: "/login" in browser.current_url, 10, "logged out")
        browser.get(base + "/")
        assert "/login" in browser.current_url  # the session has ended

        assert node.cli("users", "add", "boss", "--role", "admin", input="checks-things\n").returncode == 0
        _log_in(browser, base, "boss", "checks-things")
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#worklist"), 10, "worklist")
        browser.get(base + "/admin")
        browser.find_element(By.CSS_SELECTOR, ".do-check[data-name='out']").click()
        cell = browser.find_element(By.CSS_SELECTOR, ".check[data-name='out']")
        _wait(lambda: ": ok — " in cell.text, 10, "destination check shown")
        assert _csp_violations(browser) == []
        log = node.log_path.read_text()
    # no PHI in the node's log at INFO: neither the Patient ID nor the search for it
    assert "LIDC-IDRI-0314" not in log and "INFO" in log

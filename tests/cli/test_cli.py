"""The dicom-ai command against a real node process on loopback."""

from __future__ import annotations

import subprocess
import sys

import peers
import pytest
from nodeproc import NodeProcess

pytestmark = pytest.mark.integration


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_ai.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_echo_send_and_clean_shutdown(tmp_path, dcmtk, shared_data):
    node = NodeProcess(tmp_path / "node", stable_seconds=60).start()
    try:
        port = str(node.port)
        ok = run("echo", "127.0.0.1", port, "--aet", "STORESCU", "--aec", "DICOM_AI")
        assert ok.returncode == 0 and "0x0000" in ok.stdout, ok.stdout + ok.stderr
        refused = run("echo", "127.0.0.1", port, "--aet", "STRANGER", "--aec", "DICOM_AI")
        assert refused.returncode == 1 and "C-ECHO failed" in refused.stderr
        src = shared_data / "ct_abdomen_CRLM-CT-1006" / "image"
        sent = run("send", str(src), "--host", "127.0.0.1", "--port", port, "--aet", "STORESCU", "--aec", "DICOM_AI")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "sent 51 of 51" in sent.stdout
        studies = node.cli("studies", "list")
        assert "CRLM-CT-1006" in studies.stdout and "51" in studies.stdout
    finally:
        code = node.stop()
    assert code == 0, node.log_tail()
    log = node.log_path.read_text()
    assert "signal SIGTERM received" in log and "stopped" in log
    assert not list((tmp_path / "node" / "var").rglob(".tmp-*"))


def test_send_to_nobody_fails_clearly(tmp_path, shared_data):
    port = str(peers.free_port())
    src = shared_data / "ct_abdomen_CRLM-CT-1006" / "image" / "1-01.dcm"
    out = run("send", str(src), "--host", "127.0.0.1", "--port", port)
    assert out.returncode == 1 and "send failed" in out.stderr


def test_jobs_survive_restart(tmp_path, dcmtk, shared_data):
    """Job rows are in the database: a job queued before a restart is still there after it."""
    # one association brings the series whole, so its A-RELEASE completes it; the idle timer is
    # only the fallback, long enough that a stall of the machine mid-send cannot close it early
    node = NodeProcess(tmp_path / "node", stable_seconds=30,
                       extra={"models": [{"path": str(tmp_path / "no-such-model"), "enabled": True}]})
    with node:
        assert peers.storescu("127.0.0.1", node.port, shared_data / "ct_abdomen_CRLM-CT-1006" / "image",
                              aec="DICOM_AI").returncode == 0
        assert node.wait_for_log("complete (51 images", 30), node.log_tail()
    with node:
        listed = node.cli("studies", "list")
        assert "complete" in listed.stdout, listed.stdout
    assert "model package" in node.log_path.read_text()  # the missing model was reported, not fatal

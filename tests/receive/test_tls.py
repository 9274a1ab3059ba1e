"""DICOM TLS (PS3.15 B.1), with DCMTK storescu +tls as the modality."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import peers
import pytest
from nodeproc import NodeProcess

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate it signed, and a stranger."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=dicom-ai test CA", cwd=d)
    for name, cn in (("server", "127.0.0.1"), ("client", "CT_SCANNER")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={cn}", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "stranger.key", "-out",
             "stranger.pem", "-days", "2", "-subj", "/CN=stranger", cwd=d)
    return d


def _stored(node: NodeProcess) -> list[Path]:
    root = node.workdir / "var" / "instances"
    return list(root.rglob("*.dcm")) if root.exists() else []


def test_tls_peer_with_valid_certificate_stores_others_refused(tmp_path, pki, dcmtk, lidc_series):
    tls = {"enabled": True, "certificate": str(pki / "server.pem"), "private_key": str(pki / "server.key"),
           "ca_certificates": str(pki / "ca.pem"), "require_peer_certificate": True}
    node = NodeProcess(tmp_path / "node", stable_seconds=600, extra={"tls": tls})
    # NodeProcess.start checks readiness with plain echoscu, which TLS refuses: wait on the log
    node.start(ready=lambda: node.wait_for_log("with TLS", 0.2))
    try:
        files = [str(p) for p in lidc_series[:3]]
        ok = peers.storescu("127.0.0.1", node.port, files, aec="DICOM_AI",
                            extra_args=["+tls", str(pki / "client.key"), str(pki / "client.pem"),
                                        "+cf", str(pki / "ca.pem")])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert len(_stored(node)) == 3

        stranger = peers.storescu("127.0.0.1", node.port, [str(lidc_series[3])], aec="DICOM_AI",
                                  extra_args=["+tls", str(pki / "stranger.key"), str(pki / "stranger.pem"),
                                              "+cf", str(pki / "ca.pem")])
        plain = peers.storescu("127.0.0.1", node.port, [str(lidc_series[4])], aec="DICOM_AI")
        assert stranger.returncode != 0 and plain.returncode != 0
        assert len(_stored(node)) == 3
        assert node.wait_for_log("TLS handshake failed: CERTIFICATE_VERIFY_FAILED", 10), node.log_tail()
        assert node.wait_for_log("TLS handshake failed: WRONG_VERSION_NUMBER", 10)  # plain DICOM

        # a client that connects and never says hello holds the others up for at most the
        # handshake timeout (10 s), not forever
        import socket

        staller = socket.create_connection(("127.0.0.1", node.port))
        try:
            again = peers.storescu("127.0.0.1", node.port, [str(lidc_series[5])], aec="DICOM_AI",
                                   extra_args=["+tls", str(pki / "client.key"), str(pki / "client.pem"),
                                               "+cf", str(pki / "ca.pem")], timeout=60)
            assert again.returncode == 0, again.stdout + again.stderr
            assert len(_stored(node)) == 4
        finally:
            staller.close()
    finally:
        node.stop()


def test_tls_enabled_without_files_is_a_config_error(tmp_path):
    from dicom_ai.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="tls: .*certificate"):
        load_settings(None, tls={"enabled": True})

"""Delivery with real parts: results reach Orthanc once, through outages, rejections, restarts,
DICOMweb STOW-RS and return-to-sender."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import peers
import pydicom
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Delivery

pytestmark = pytest.mark.integration
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture
def crlm(shared_data) -> Path:
    return shared_data / "ct_abdomen_CRLM-CT-1006" / "image"


def _pacs(orthanc: peers.Orthanc, name: str = "pacs") -> dict:
    return {"name": name, "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}


def _results(pacs: peers.Orthanc, study_uid: str) -> list[dict]:
    return [i for i in pacs.instances_of_study(study_uid) if i["sop_class_uid"] in (SEG, SR)]


def _wait(predicate, timeout: float, what: str, node: NodeProcess):
    return peers.wait_for(predicate, timeout, what, node.log_tail, interval=1)


def _deliveries(node: NodeProcess) -> list[Delivery]:
    return node.rows(Delivery)


def _send(node, folder):
    done = peers.storescu("127.0.0.1", node.port, folder, aec=node.ae_title)
    assert done.returncode == 0, done.stdout + done.stderr
    return pydicom.dcmread(next(Path(folder).iterdir()), stop_before_pixels=True).StudyInstanceUID


def test_pacs_down_while_processing_then_back_every_object_arrives_once(tmp_path, dcmtk, orthanc, crlm):
    with NodeProcess(tmp_path / "node", destinations=[_pacs(orthanc)], stable_seconds=2) as node:
        orthanc.pause()
        study = _send(node, crlm)
        _wait(lambda: node.log_path.read_text().count("delivery of") >= 4, 120,
              "retries against the stopped PACS", node)
        orthanc.resume()
        got = _wait(lambda: len(_results(orthanc, study)) == 2 and _results(orthanc, study), 60,
                    "SEG and SR in Orthanc", node)
        time.sleep(3)  # any duplicate send would happen now
        rows = _deliveries(node)
        listed = node.cli("deliveries", "list")
    assert sorted(i["sop_class_uid"] for i in got) == sorted([SEG, SR])
    assert [r.state for r in rows] == ["delivered", "delivered"]
    assert all(r.attempts >= 2 for r in rows), [(r.attempts, r.last_status) for r in rows]
    assert all("Success" in r.last_status for r in rows)
    assert len(_results(orthanc, study)) == 2
    assert "delivered" in listed.stdout


def test_a_destination_refusing_our_ae_title_dead_letters_then_resend_delivers(tmp_path, dcmtk, crlm):
    with peers.Orthanc(workdir=tmp_path / "orthanc",
                       config={"DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False}) as strict:
        extra = {"delivery": {"retry_initial_seconds": 1, "retry_max_seconds": 2, "horizon_hours": 0.002}}
        with NodeProcess(tmp_path / "node", destinations=[{**_pacs(strict, "strict"), "timeout_seconds": 5}],
                         stable_seconds=2,
                         extra=extra) as node:
            study = _send(node, crlm)
            _wait(lambda: [r.state for r in _deliveries(node)] == ["failed", "failed"], 180,
                  "two dead letters", node)
            dead = node.cli("deliveries", "list", "--state", "failed")
            assert dead.stdout.count("failed") == 2, dead.stdout
            assert "dead letter" in node.log_path.read_text()
            assert _results(strict, study) == []
            # the PACS admin adds us; the node admin resends
            strict.put("/modalities/dicomai", {"AET": node.ae_title, "Host": "127.0.0.1", "Port": node.port})
            resent = node.cli("deliveries", "resend", "--failed")
            assert "2 deliveries due again" in resent.stdout, resent.stdout + resent.stderr
            _wait(lambda: len(_results(strict, study)) == 2, 60, "SEG and SR after resend", node)
            rows = _deliveries(node)
    assert [r.state for r in rows] == ["delivered", "delivered"]


def test_restart_between_sending_and_recording_sends_nothing_twice(tmp_path, dcmtk, orthanc, crlm):
    node = NodeProcess(tmp_path / "node", destinations=[_pacs(orthanc)], stable_seconds=2)
    with node:
        study = _send(node, crlm)
        _wait(lambda: [r.state for r in _deliveries(node)] == ["delivered"] * 2, 180, "deliveries", node)
    got = {i["sop_class_uid"]: i for i in _results(orthanc, study)}
    received = {k: orthanc.get_bytes(f"/instances/{i['id']}/metadata/ReceptionDate") for k, i in got.items()}
    # the node stopped after the transfer and before recording it (state left 'sending'); the
    # SR never arrived (removed from the PACS)
    orthanc.delete(f"/instances/{got[SR]['id']}")
    db = sqlite3.connect(node.workdir / "var" / "index.sqlite")
    db.execute("update deliveries set state = 'sending', delivered_at = null")
    db.commit()
    db.close()
    time.sleep(1.1)  # ReceptionDate has a resolution of 1 s
    with node:
        _wait(lambda: [r.state for r in _deliveries(node)] == ["delivered"] * 2, 60, "recovery", node)
        rows = {r.result_fk: r for r in _deliveries(node)}
        log = node.log_path.read_text()
    after = {i["sop_class_uid"]: i for i in _results(orthanc, study)}
    assert set(after) == {SEG, SR}
    # the SEG was found at the PACS and not sent again; the SR was sent again
    assert orthanc.get_bytes(f"/instances/{after[SEG]['id']}/metadata/ReceptionDate") == received[SEG]
    assert "found at the destination after a restart" in log
    assert "not at the destination after a restart; sending again" in log
    assert sorted(r.last_status.split(" ")[0] for r in rows.values()) == ["0x0000", "found"]


@pytest.mark.skipif(not DICOMWEB_PLUGIN.exists(), reason="Debian orthanc-dicomweb not installed")
def test_stow_rs_and_return_to_sender(tmp_path, dcmtk, orthanc, crlm):
    web_config = {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    with peers.Orthanc(workdir=tmp_path / "web", config=web_config) as web:
        destinations = [
            {"name": "web", "kind": "stow", "url": f"{web.url}/dicom-web"},
            {"name": "sender", "kind": "return"},
        ]
        # the sending peer STORESCU receives its results at the 'orthanc' fixture's port
        sender = [{"ae_title": "STORESCU", "host": "127.0.0.1", "port": orthanc.dicom_port}]
        with NodeProcess(tmp_path / "node", destinations=destinations, peers_=sender, stable_seconds=2) as node:
            checks = [node.cli("destinations", "check", "web"),
                      node.cli("destinations", "check", "sender", "--peer", "STORESCU")]
            study = _send(node, crlm)
            _wait(lambda: len(_results(web, study)) == 2 and len(_results(orthanc, study)) == 2, 180,
                  "results by STOW-RS and returned to the sender", node)
            bad = node.cli("destinations", "check", "sender", "--peer", "NOBODY")
    for check in checks:
        assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr
    assert "QIDO-RS" in checks[0].stdout and "C-ECHO" in checks[1].stdout
    assert bad.returncode == 1 and "not in [[peers]]" in bad.stderr

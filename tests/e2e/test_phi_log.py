"""The node's log holds no patient data and no line a peer wrote.

A real series goes through ``dicom-ai serve`` (receive, schedule, inference, SEG and SR) under
a probe patient whose single-component name makes highdicom warn with the name in its text; a
probe instance whose UID holds a newline is sent too. The whole log, at INFO (which includes
WARNING), must contain neither the probe name, ID nor birth date, and no line the probe forged.
"""

from __future__ import annotations

import time
from pathlib import Path

import peers
import pydicom
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Job

pytestmark = pytest.mark.integration

NAME, PATIENT_ID, BIRTH = "PROBENAMEQX", "PROBEID7731", "19010203"
FORGED = "INFO MainProcess dicom_ai.node: FORGED"


def _send_with_newline_uid(port: int, src: Path, tmp_path: Path) -> int | None:
    ds = pydicom.dcmread(src)
    uid = "1.2.3\n" + FORGED  # 44 characters, within the 64 a UID may have
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(tmp_path / "newline.dcm")
    return peers.cstore_file(port, tmp_path / "newline.dcm")


def test_log_holds_no_patient_data_and_no_forged_line(tmp_path: Path, shared_data: Path) -> None:
    series = peers.copy_series(shared_data / "ct_abdomen_CRLM-CT-1006" / "image", tmp_path / "probe",
                               PatientName=NAME, PatientID=PATIENT_ID, PatientBirthDate=BIRTH)
    # one association brings the series whole, so its A-RELEASE completes it; the idle timer is
    # only the fallback, long enough that a stall of the machine mid-send cannot close it early
    with NodeProcess(tmp_path / "node", stable_seconds=30,
                     extra={"node": {"receivers": 1}, "web": {"enabled": False}}) as node:
        sent = peers.storescu("127.0.0.1", node.port, tmp_path / "probe", aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        assert _send_with_newline_uid(node.port, series[0], tmp_path) == 0xA900
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = node.rows(Job)
            if jobs and all(j.state in ("done", "failed") for j in jobs):
                break
            time.sleep(1)
        assert jobs and all(j.state == "done" for j in jobs), node.log_tail()
        time.sleep(1)  # the worker's last lines
    log = node.log_path.read_text(errors="replace")
    assert "UserWarning" in log and "person name" in log, "the probe did not make highdicom warn"
    for secret in (NAME, PATIENT_ID, BIRTH):
        assert secret not in log, [line for line in log.splitlines() if secret in line]
    forged = [line for line in log.splitlines() if line.startswith(FORGED)]
    assert forged == []
    assert "\\n" + FORGED in log  # the refusal is logged, with the newline escaped


def test_formatter_escapes_every_control_character_and_withholds_library_values() -> None:
    import logging

    from dicom_ai.logconf import FORMAT, OneLineFormatter

    fmt = OneLineFormatter(FORMAT)

    def line(name: str, msg: str, *args: object) -> str:
        return fmt.format(logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None))

    out = line("dicom_ai.receive.scp", "refused %s", "1.2\r\n\x1b[31m\x85\u2028x")
    assert "\n" not in out and "\r" not in out and "\x1b" not in out and "\x85" not in out
    assert out.endswith("refused 1.2\\r\\n\\x1b[31m\\x85\\u2028x")
    assert line("dicom_ai.x", 'ours "kept"').endswith('ours "kept"')  # our own messages quote UIDs
    for logger in ("py.warnings", "pydicom", "highdicom.seg"):
        assert "Doe^Jane" not in line(logger, "Invalid value for VR PN: 'Doe^Jane' and \"Doe^Jane\"")

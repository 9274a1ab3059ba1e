"""An instance acknowledged with success is never lost, even when the node is killed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import peers
import pydicom
import pytest
from nodeproc import NodeProcess
from pynetdicom import AE

from dicom_ai.cache.db import Instance, open_index

pytestmark = pytest.mark.integration
CT = "1.2.840.10008.5.1.4.1.1.2"


def _sender(port: int, files: list[Path], acked: list[str], done: threading.Event) -> None:
    """Send one by one, recording each SOP Instance UID acknowledged with 0x0000."""
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT, ["1.2.840.10008.1.2"])
    ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_AI")
    try:
        for f in files:
            status = assoc.send_c_store(f)
            if not status or int(status.Status) != 0:
                break
            acked.append(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - the peer dies under us: that is the point
        pass
    finally:
        if assoc.is_established:
            assoc.abort()
        done.set()


def test_sigkill_mid_transfer_loses_no_acknowledged_instance(tmp_path, dcmtk, lidc_series):
    node = NodeProcess(tmp_path / "node", stable_seconds=600).start()
    acked: list[str] = []
    done = threading.Event()
    thread = threading.Thread(target=_sender, args=(node.port, lidc_series, acked, done))
    thread.start()
    deadline = time.monotonic() + 120
    while len(acked) < 100 and time.monotonic() < deadline and not done.is_set():
        time.sleep(0.01)
    node.kill()
    thread.join(30)
    assert 100 <= len(acked) < len(lidc_series), len(acked)

    node.start()  # the same data_dir
    try:
        var = tmp_path / "node" / "var"
        assert not list(var.rglob(".tmp-*")), "temporary files survived the restart"
        sessions = open_index(f"sqlite:///{var / 'index.sqlite'}")
        with sessions() as s:
            rows = {i.sop_instance_uid: i.path for i in s.query(Instance)}
        assert set(acked) <= set(rows), f"{len(set(acked) - set(rows))} acknowledged instances lost"
        by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in lidc_series}
        for uid, rel in rows.items():  # every indexed file is whole
            stored = pydicom.dcmread(var / rel)
            assert stored.PixelData == pydicom.dcmread(by_uid[uid]).PixelData
        # the sender resends everything; the series completes with all 275 instances
        out = peers.storescu("127.0.0.1", node.port, peers.LIDC_SERIES, aec=node.ae_title)
        assert out.returncode == 0, out.stderr
        with sessions() as s:
            assert s.query(Instance).count() == len(lidc_series)
    finally:
        node.stop()


def test_job_running_at_sigkill_is_resumed_after_restart(tmp_path, dcmtk, lidc_series):
    out_dir = tmp_path / "out"
    node = NodeProcess(tmp_path / "node", stable_seconds=1,
                       destinations=[{"name": "folder", "kind": "folder", "path": str(out_dir)}])
    node.start()
    assert peers.storescu("127.0.0.1", node.port, peers.LIDC_SERIES, aec=node.ae_title).returncode == 0
    assert node.wait_for_log("job 1: ", 60), node.log_tail()  # the worker has claimed the job
    node.kill()
    node.start()
    try:
        assert node.wait_for_log("1 jobs requeued", 10), node.log_tail()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(list(out_dir.glob("*.dcm"))) < 2:
            time.sleep(1)
        assert len(list(out_dir.glob("*.dcm"))) == 2, node.log_tail()
        shown = node.cli("jobs", "show", "1").stdout
        assert "job 1: done" in shown and "attempts 2" in shown, shown
    finally:
        node.stop()

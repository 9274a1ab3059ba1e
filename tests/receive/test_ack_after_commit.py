"""No instance is acknowledged before its row is committed (SQLite ``synchronous=FULL``) and
its file is in place, also when several associations store at the same time.

Real parts throughout: the in-process :class:`StorageSCP` on loopback, pynetdicom senders on
concurrent associations, slices of the LIDC-IDRI-0314 CT; the index is read by a separate SQLite
connection, which sees committed rows only.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pydicom
from pynetdicom import AE

import dicom_ai.cache.store as store

CT = "1.2.840.10008.5.1.4.1.1.2"
ASSOCIATIONS = 4
PER_ASSOCIATION = 6


def test_no_instance_is_acknowledged_before_its_row_is_committed(tmp_path, lidc_series, monkeypatch, running_scp):
    """4 associations send at once; each rename's folder fsync is slowed by 50 ms, so the
    instances wait on each other. At each success response the sender looks, on a connection
    of its own, for the instance's row and file: both must be there already."""
    real_sync = store.Staged.sync

    def slow_sync(staged):
        time.sleep(0.05)  # the window in which an early acknowledgement would be seen
        real_sync(staged)

    monkeypatch.setattr(store.Staged, "sync", slow_sync)
    scp = running_scp
    db = tmp_path / "var" / "index.sqlite"
    files = lidc_series[: ASSOCIATIONS * PER_ASSOCIATION]
    early: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def send(group: list[Path]) -> None:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(CT, [pydicom.uid.ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", scp.settings.node.port, ae_title="DICOM_AI")
        assert assoc.is_established
        reader = sqlite3.connect(db)
        try:
            for path in group:
                ds = pydicom.dcmread(path)
                status = int(assoc.send_c_store(ds).Status)
                row = reader.execute("SELECT path FROM instances WHERE sop_instance_uid = ?",
                                     (ds.SOPInstanceUID,)).fetchone()
                with lock:
                    statuses.append(status)
                    if status == 0 and (row is None or not (tmp_path / "var" / row[0]).is_file()):
                        early.append(ds.SOPInstanceUID)
        finally:
            reader.close()
            assoc.release()

    threads = [threading.Thread(target=send, args=(files[i::ASSOCIATIONS],)) for i in range(ASSOCIATIONS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        scp.stop()
    assert statuses == [0] * len(files)
    assert not early, f"{len(early)} instance(s) acknowledged before their row was committed"

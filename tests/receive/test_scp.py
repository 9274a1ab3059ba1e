"""The C-STORE SCP in-process, with DCMTK and pynetdicom as senders on loopback."""

from __future__ import annotations

from pathlib import Path

import peers
import pydicom
import pytest
from pynetdicom import AE

from dicom_ai.cache.db import Instance, Series, open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.receive.scp import StorageSCP

CT = "1.2.840.10008.5.1.4.1.1.2"


def _scp(tmp_path: Path, **node):
    settings = load_settings(
        None,
        node={"ae_title": "DICOM_AI", "port": peers.free_port(), "bind_address": "127.0.0.1",
              "data_dir": str(tmp_path / "var"), **node},
        peers=[{"ae_title": "STORESCU", "host": "127.0.0.1"}, {"ae_title": "NET", "host": "127.0.0.0/8"}],
    )
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    server = StorageSCP(settings, store, sessions)
    server.start()
    return server


@pytest.fixture
def scp(tmp_path: Path):
    server = _scp(tmp_path)
    yield server
    server.stop()


def _send(scp: StorageSCP, ds: pydicom.Dataset, aet: str = "STORESCU") -> int:
    ae = AE(ae_title=aet)
    ae.add_requested_context(CT, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", scp.settings.node.port, ae_title="DICOM_AI")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "instances").rglob("*") if p.is_file()) if (root / "instances").exists() else []


@pytest.mark.integration
def test_storescu_series_stored_and_indexed(scp, dcmtk, shared_data):
    src = shared_data / "ct_abdomen_CRLM-CT-1006" / "image"
    out = peers.storescu("127.0.0.1", scp.settings.node.port, src, aec="DICOM_AI")
    assert out.returncode == 0, out.stderr
    files = _files(scp.store.root)
    assert len(files) == 51
    with scp.sessions() as s:
        assert s.query(Instance).count() == 51
        series = s.query(Series).one()
        assert series.modality == "CT" and series.calling_ae_title == "STORESCU"
    # stored as received: byte-identical data set after the file meta
    original = pydicom.dcmread(sorted(src.iterdir())[0])
    with scp.sessions() as s:
        rel = s.query(Instance).filter_by(sop_instance_uid=original.SOPInstanceUID).one().path
    stored = pydicom.dcmread(scp.store.root / rel)
    assert stored.PixelData == original.PixelData
    assert stored.PatientID == original.PatientID
    # the same instance sent twice is idempotent
    again = peers.storescu("127.0.0.1", scp.settings.node.port, src, aec="DICOM_AI")
    assert again.returncode == 0
    assert len(_files(scp.store.root)) == 51
    with scp.sessions() as s:
        assert s.query(Instance).count() == 51


@pytest.mark.integration
@pytest.mark.parametrize("aet, aec, reason, logged", [
    ("INTRUDER", "DICOM_AI", "Calling AE Title Not Recognized", "calling AE title 'INTRUDER' from 127.0.0.1"),
    ("STORESCU", "SOMEONE_ELSE", "Called AE Title Not Recognized", "called AE title 'SOMEONE_ELSE'"),
])
def test_unknown_peers_rejected_at_association(scp, dcmtk, aet, aec, reason, logged, caplog):
    out = peers.echoscu("127.0.0.1", scp.settings.node.port, aec=aec, aet=aet)
    assert out.returncode != 0
    assert reason in out.stderr + out.stdout
    refusals = [r.getMessage() for r in caplog.records if "association refused" in r.getMessage()]
    assert len(refusals) == 1 and logged in refusals[0], refusals


@pytest.mark.integration
def test_subnet_peer_allowed(scp, dcmtk):
    assert peers.echoscu("127.0.0.1", scp.settings.node.port, aec="DICOM_AI", aet="NET").returncode == 0


@pytest.mark.parametrize("field", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_path_traversal_uids_refused(scp, lidc_series, field):
    ds = pydicom.dcmread(lidc_series[0])
    setattr(ds, field, "../../../../tmp/evil")
    assert _send(scp, ds) == 0xA900
    assert _files(scp.store.root) == []
    assert not Path("/tmp/evil").exists()


def test_totalsegmentator_blank_uids_refused(scp, shared_data, monkeypatch):
    """The TotalSegmentator files have empty SOP Class/Instance UIDs in the data set: 0xA900.

    pynetdicom's chunked mode takes the request's UIDs from the file meta and streams the data
    set as it is in the file, as a careless sender would.
    """
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    src = sorted((shared_data / "totalsegmentator_examples" / "example_ct_dicom").iterdir())[0]
    ts = pydicom.dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CT, [ts])
    assoc = ae.associate("127.0.0.1", scp.settings.node.port, ae_title="DICOM_AI")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(src)
    finally:
        assoc.release()
    assert int(status.Status) == 0xA900
    assert _files(scp.store.root) == []


@pytest.mark.integration
def test_disk_reserve_refuses_with_a700_and_writes_nothing(tmp_path, dcmtk, shared_data, caplog):
    import shutil

    free_mb = shutil.disk_usage(tmp_path).free >> 20
    server = _scp(tmp_path, min_free_mb=free_mb + 1024)  # a reserve above what is free
    try:
        src = sorted((shared_data / "ct_abdomen_CRLM-CT-1006" / "image").iterdir())[0]
        out = peers.storescu("127.0.0.1", server.settings.node.port, src, aec="DICOM_AI", extra_args=["-v"])
        assert out.returncode != 0
        assert "Refused: OutOfResources" in out.stdout + out.stderr, out.stdout + out.stderr  # 0xA7xx
        assert _files(server.store.root) == []
        with server.sessions() as s:
            assert s.query(Instance).count() == 0
        assert any("0xA700" in r.getMessage() and "min_free_mb" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


@pytest.mark.integration
def test_a_file_that_cannot_be_written_is_refused_with_a700(tmp_path, dcmtk, shared_data, caplog):
    """The instance is written under a temporary name in ``incoming/`` while it is parsed;
    when that folder cannot be made (here a file stands in its place), the C-STORE gets
    0xA700 with one log line, and nothing is indexed."""
    server = _scp(tmp_path)
    try:
        (server.store.root / "incoming").write_bytes(b"")  # mkdir and open(2) under it fail
        src = sorted((shared_data / "ct_abdomen_CRLM-CT-1006" / "image").iterdir())[0]
        out = peers.storescu("127.0.0.1", server.settings.node.port, src, aec="DICOM_AI", extra_args=["-v"])
        assert out.returncode != 0
        assert "Refused: OutOfResources" in out.stdout + out.stderr, out.stdout + out.stderr
        assert _files(server.store.root) == []
        with server.sessions() as s:
            assert s.query(Instance).count() == 0
        assert [r.getMessage()[:40] for r in caplog.records if "0xA700" in r.getMessage()]
    finally:
        server.stop()

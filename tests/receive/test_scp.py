"""The C-STORE SCP in-process, with DCMTK and pynetdicom as senders on loopback."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

import peers
from dicom_ai.cache.db import Instance, Series, open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.receive.scp import StorageSCP

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def scp(tmp_path: Path):
    settings = load_settings(
        None,
        node={"ae_title": "DICOM_AI", "port": peers.free_port(), "bind_address": "127.0.0.1",
              "data_dir": str(tmp_path / "var")},
        peers=[{"ae_title": "STORESCU", "host": "127.0.0.1"}, {"ae_title": "NET", "host": "127.0.0.0/8"}],
    )
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    server = StorageSCP(settings, store, sessions)
    server.start()
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


@pytest.mark.parametrize("aet, aec, reason", [
    ("INTRUDER", "DICOM_AI", "Calling AE Title Not Recognized"),
    ("STORESCU", "SOMEONE_ELSE", "Called AE Title Not Recognized"),
])
def test_unknown_peers_rejected_at_association(scp, dcmtk, aet, aec, reason, caplog):
    out = peers.echoscu("127.0.0.1", scp.settings.node.port, aec=aec, aet=aet)
    assert out.returncode != 0
    assert reason in out.stderr + out.stdout


def test_subnet_peer_allowed(scp, dcmtk):
    assert peers.echoscu("127.0.0.1", scp.settings.node.port, aec="DICOM_AI", aet="NET").returncode == 0


@pytest.mark.parametrize("field", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_path_traversal_uids_refused(scp, lidc_series, field):
    ds = pydicom.dcmread(lidc_series[0])
    setattr(ds, field, "../../../../tmp/evil")
    assert _send(scp, ds) == 0xA900
    assert _files(scp.store.root) == []
    assert not Path("/tmp/evil").exists()


def _send_raw(scp: StorageSCP, path: Path, sop_class: str, sop_instance: str) -> int:
    """C-STORE a file's data set as it is, with the given affected UIDs in the request."""
    from io import BytesIO

    from pydicom.filewriter import dcmwrite
    from pynetdicom.dimse_primitives import C_STORE

    ds = pydicom.dcmread(path)
    ts = ds.file_meta.TransferSyntaxUID
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", scp.settings.node.port, ae_title="DICOM_AI")
    assert assoc.is_established
    try:
        cx = assoc.accepted_contexts[0]
        buf = BytesIO()
        dcmwrite(buf, ds, write_like_original=True)
        raw = buf.getvalue()
        # drop preamble and file meta: the data set as encoded in the file
        meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
        req = C_STORE()
        req.MessageID = 1
        req.AffectedSOPClassUID = sop_class
        req.AffectedSOPInstanceUID = sop_instance
        req.Priority = 2
        req.DataSet = BytesIO(raw[meta_end:])
        assoc.dimse.send_msg(req, cx.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
        return int(rsp.Status)
    finally:
        assoc.release()


def test_totalsegmentator_blank_uids_refused(scp, shared_data):
    """The TotalSegmentator files have empty SOP Class/Instance UIDs in the data set: 0xA900."""
    src = sorted((shared_data / "totalsegmentator_examples" / "example_ct_dicom").iterdir())[0]
    meta = pydicom.dcmread(src, stop_before_pixels=True).file_meta
    status = _send_raw(scp, src, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID)
    assert status == 0xA900
    assert _files(scp.store.root) == []

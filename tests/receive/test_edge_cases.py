"""Every file of ../shared/data/edge_cases sent by C-STORE.

Each file is either stored (and its image decodes later) or refused with 0xA900, a 0xC000-range
status or 0xA700, with one log line saying why; a non-image SOP class is refused at association
(no presentation context accepted). The node never crashes or hangs, no temporary file stays,
and what was stored before is not touched. The receiver reads compressed pixel data only by its
items, headers and markers (:mod:`dicom_ai.dicom.codestream`), so that every stored image
decodes is checked here, after storage.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import peers
import pydicom
import pytest
from pynetdicom import AE, _config

from dicom_ai.cache.db import Instance

from .test_scp import _files, _scp

pytestmark = pytest.mark.integration


def _send(port: int, path: Path) -> str:
    """C-STORE one file as it is (UIDs from the file meta, data set streamed as stored)."""
    try:
        meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
        sop, ts = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
    except Exception:  # noqa: BLE001
        return "unsendable"  # no usable file meta: no SCU could send it as it is
    ae = AE(ae_title="STORESCU")
    ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_AI")
    if not assoc.is_established:  # pynetdicom aborts when the node accepted no context
        return "not accepted"
    try:
        status = assoc.send_c_store(path)
        return f"0x{int(status.Status):04X}" if status else "no response"
    finally:
        assoc.release()


def _digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(root)}


def test_every_edge_case_is_stored_decodable_or_refused(tmp_path, shared_data, monkeypatch, caplog, lidc_series):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    caplog.set_level(logging.WARNING, logger="dicom_ai")
    server = _scp(tmp_path)
    port = server.settings.node.port
    try:
        for f in lidc_series[:3]:  # stored before: must stay byte-identical
            assert _send(port, f) == "0x0000"
        before = _digest(server.store.root)

        outcomes: dict[str, str] = {}
        files = sorted(p for p in (shared_data / "edge_cases").rglob("*")
                       if p.is_file() and p.name not in ("LICENSE", "README.md"))
        for f in files:
            caplog.clear()
            outcome = _send(port, f)
            outcomes[str(f.relative_to(shared_data))] = outcome
            refusals = [r for r in caplog.records if "refused" in r.getMessage()]
            if outcome == "0x0000":
                assert refusals == [], (f, refusals)
            elif outcome.startswith("0x"):
                code = int(outcome, 16)
                assert code == 0xA900 or code == 0xA700 or 0xC000 <= code <= 0xCFFF, (f, outcome)
                assert len(refusals) == 1, (f, [r.getMessage() for r in caplog.records])
            else:
                assert outcome in ("not accepted", "unsendable"), (f, outcome)

        print("\n".join(f"{v:14s} {k}" for k, v in outcomes.items()))
        assert sum(v == "0x0000" for v in outcomes.values()) >= 40
        # the same instance twice: still one file, one row
        assert _send(port, lidc_series[0]) == "0x0000"
        with server.sessions() as s:
            n_rows = s.query(Instance).count()
            rows = {i.sop_instance_uid: i.path for i in s.query(Instance)}
        assert n_rows == len(_files(server.store.root))
        # every stored image decodes; nothing temporary is left; earlier files untouched
        for rel in rows.values():
            ds = pydicom.dcmread(server.store.root / rel)
            if "PixelData" in ds:
                ds.pixel_array  # noqa: B018 - decoding it is the check
        assert not peers.leftover_temporaries(server.store.root)
        after = _digest(server.store.root)
        assert all(after[k] == v for k, v in before.items())
        # still alive
        assert peers.echoscu("127.0.0.1", port, aec="DICOM_AI", aet="STORESCU").returncode == 0
    finally:
        server.stop()

"""Instances built to exhaust memory are refused as they arrive, and the receiver's peak memory
stays within a small multiple of ``[node] max_instance_mb``.

Each bomb goes to a real ``dicom-ai serve`` (one receiver process, so the process that runs the
C-STORE handler is the one whose peak resident set, ``VmHWM`` in ``/proc/PID/status``, is read).
After every bomb the node still stores a real slice and answers C-ECHO.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import peers
import pydicom
import pytest
from nodeproc import NodeProcess
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import _config

from dicom_ai.cache.db import Instance

pytestmark = pytest.mark.integration

LIMIT_MB = 32
MiB = 2**20


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size so far (bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _send(port: int, path: Path, ts: str) -> int | None:
    return peers.cstore_file(port, path, ts)


def _slice(lidc_series: list[Path], **attrs) -> Dataset:
    ds = pydicom.dcmread(lidc_series[0])
    ds.SOPInstanceUID = generate_uid()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def _file(path: Path, ds: Dataset, ts: str, body: bytes | None = None) -> Path:
    """Write ``ds`` as a DICOM file in ``ts``; ``body`` (already encoded) replaces its data set."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    if body is None:
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds)
        body = out.getvalue()
    path.write_bytes(fp.getvalue() + body)
    return path


def _explicit(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def _deflate_bomb(path: Path, ds: Dataset, inflated: int) -> Path:
    """A deflated data set (PS3.5 A.5) whose private OB element of ``inflated`` zero bytes
    compresses about a thousand-fold."""
    low = Dataset()
    high = Dataset()
    for elem in ds:
        (low if elem.tag.group < 0x0009 else high).add(elem)
    creator = Dataset()
    creator.add_new(0x00090010, "LO", "BOMB")
    pack = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [pack.compress(_explicit(low) + _explicit(creator)),
             pack.compress(struct.pack("<HH2sHL", 0x0009, 0x1000, b"OB", 0, inflated))]
    zeros = bytes(MiB)
    for _ in range(inflated // MiB):
        parts.append(pack.compress(zeros))
    parts.append(pack.compress(_explicit(high)))
    parts.append(pack.flush())
    return _file(path, ds, DeflatedExplicitVRLittleEndian, b"".join(parts))


def _rle_bomb(path: Path, ds: Dataset, rows: int, cols: int) -> Path:
    """An RLE instance (PS3.5 G) declaring ``rows x cols`` 16-bit pixels in two tiny segments."""
    segment = b"\x81\x00" * 8  # runs of 128 zero bytes
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    return _file(path, ds, RLELossless, _explicit(ds))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    work = tmp_path_factory.mktemp("bombs")
    with NodeProcess(work, extra={"node": {"receivers": 1, "max_instance_mb": LIMIT_MB},
                                  "web": {"enabled": False}}) as node:
        yield node


@pytest.fixture(autouse=True)
def _chunked(monkeypatch):
    # pynetdicom reads the file as it sends, so the test process never holds a bomb's bytes
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _baseline(node: NodeProcess, lidc_series: list[Path], tmp_path: Path) -> int:
    """Store a real slice, reset the receiver's peak RSS to its current RSS (``5`` to
    ``/proc/PID/clear_refs``), and return that peak."""
    ok = _file(tmp_path / "ok.dcm", _slice(lidc_series), ExplicitVRLittleEndian)
    assert _send(node.port, ok, ExplicitVRLittleEndian) == 0x0000
    Path(f"/proc/{node.proc.pid}/clear_refs").write_text("5")
    return _peak_rss(node.proc.pid)


def _still_serving(node: NodeProcess, lidc_series: list[Path], tmp_path: Path) -> None:
    ok = _file(tmp_path / "after.dcm", _slice(lidc_series), ExplicitVRLittleEndian)
    assert _send(node.port, ok, ExplicitVRLittleEndian) == 0x0000
    assert peers.echoscu("127.0.0.1", node.port, aec=node.ae_title, aet="STORESCU").returncode == 0


def _check_peak(node: NodeProcess, before: int, what: str, factor: float, logged: str) -> None:
    """The receiver's peak RSS grew less than ``factor`` x the limit since ``before``, the
    refusal was logged (``logged``), and the node still stores and answers."""
    grown = _peak_rss(node.proc.pid) - before
    print(f"{what}: peak RSS +{grown / MiB:.1f} MiB")
    assert grown < factor * LIMIT_MB * MiB, f"{what}: peak RSS grew {grown / MiB:.0f} MiB"
    assert node.wait_for_log(logged, 5)


def test_deflate_bomb_refused_before_it_inflates(node, lidc_series, tmp_path):
    before = _baseline(node, lidc_series, tmp_path)
    bomb = _deflate_bomb(tmp_path / "deflate.dcm", _slice(lidc_series), inflated=1024 * MiB)
    assert bomb.stat().st_size < 3 * MiB
    assert _send(node.port, bomb, DeflatedExplicitVRLittleEndian) == 0xA700
    _check_peak(node, before, f"deflate bomb (1 GiB inflated, {bomb.stat().st_size} bytes sent)", 3,
                "inflates to more than [node] max_instance_mb")
    _still_serving(node, lidc_series, tmp_path)


def test_rle_bomb_refused_before_its_frame_is_allocated(node, lidc_series, tmp_path):
    before = _baseline(node, lidc_series, tmp_path)
    small = _rle_bomb(tmp_path / "rle.dcm", _slice(lidc_series), 20000, 20000)  # 800 MB decoded
    assert small.stat().st_size < 4096
    assert _send(node.port, small, RLELossless) == 0xA700  # over the limit, not allocated
    huge = _rle_bomb(tmp_path / "rle65535.dcm", _slice(lidc_series), 65535, 65535)  # 8.6 GB
    assert _send(node.port, huge, RLELossless) == 0xA700
    # under the limit (4000 x 4000 x 2 = 32 000 000 bytes) but far more than 16-byte
    # segments can expand to: refused on the RLE header
    fits = _rle_bomb(tmp_path / "rle4000.dcm", _slice(lidc_series), 4000, 3999)
    assert _send(node.port, fits, RLELossless) == 0xA900
    _check_peak(node, before, "RLE bombs (20000x20000, 65535x65535, 4000x3999)", 2,
                "too few for 4000x3999 pixels")
    _still_serving(node, lidc_series, tmp_path)


def test_data_set_larger_than_the_limit_is_dropped_as_it_arrives(node, lidc_series, tmp_path):
    before = _baseline(node, lidc_series, tmp_path)
    ds = _slice(lidc_series)
    ds.Rows = ds.Columns = 6000  # 72 MB of native pixel data, more than twice the limit
    ds.PixelData = bytes(6000 * 6000 * 2)
    big = _file(tmp_path / "big.dcm", ds, ExplicitVRLittleEndian)
    del ds
    assert _send(node.port, big, ExplicitVRLittleEndian) == 0xA700
    _check_peak(node, before, f"72 MB instance over a {LIMIT_MB} MiB limit", 3,
                "exceeds [node] max_instance_mb = 32")
    _still_serving(node, lidc_series, tmp_path)


def test_an_element_claiming_more_bytes_than_follow_is_refused(node, lidc_series, tmp_path):
    ds = _slice(lidc_series)
    body = _explicit(ds) + struct.pack("<HH2sHL", 0x7FE1, 0x1010, b"OB", 0, 0xFFFFFFF0) + b"abc"
    path = _file(tmp_path / "claims.dcm", ds, ExplicitVRLittleEndian, body)
    assert _send(node.port, path, ExplicitVRLittleEndian) == 0xC000
    assert node.wait_for_log("claims 4294967280 bytes, 3 follow", 5)
    stored = [i.sop_instance_uid for i in node.rows(Instance)]
    assert ds.SOPInstanceUID not in stored

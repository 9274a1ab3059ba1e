"""load_series decodes in several processes: the volume is bit-identical to the plain
sequential loop (``pydicom.dcmread(path).pixel_array`` per file, pydicom's default plugins) on
the real CTs, and a slice whose JPEG-LS entropy-coded data are corrupt is refused with an
:class:`UndecodableSlice` that names the instance and the decoder's reason."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import time
from pathlib import Path

import jpeg_ls
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

from dicom_ai.infer import volume as volume_module
from dicom_ai.infer.volume import UndecodableSlice, VolumeError, load_series

from .conftest import DATA, REPO, files

DEMO = REPO / "demo" / "ct_chest_LIDC-IDRI-0314" / "image"
#: Real CTs: JPEG-LS lossless (demo and shared), Implicit VR LE (LIDC-0314, CRLM), JPEG 2000.
SERIES = {
    "demo-jpegls-0314": DEMO,
    "lidc-0314-implicit": DATA / "ct_chest_LIDC-IDRI-0314" / "image",
    "lidc-0001-jpegls": DATA / "ct_chest_LIDC-IDRI-0001" / "image",
    "lidc-0003-jpegls": DATA / "ct_chest_LIDC-IDRI-0003" / "image",
    "cptac-jpegls": DATA / "ct_chest_CPTAC-LSCC-C3N-00247" / "image",
    "petct-a0001-L": DATA / "ct_chest_Lung-PET-CT-Dx-A0001" / "image_5mm_kernel_L",
    "petct-a0002-B70f": DATA / "ct_chest_Lung-PET-CT-Dx-A0002" / "image_8mm_kernel_B70f",
    "crlm-implicit": DATA / "ct_abdomen_CRLM-CT-1006" / "image",
    "totalseg-j2k": DATA / "totalsegmentator_examples" / "example_ct_dicom",
}


def sequential(paths: list[Path]) -> np.ndarray:
    """The plain loop: each file read whole and decoded with pydicom's default plugins,
    ``slope * stored + intercept`` in float32, in the order given."""
    out = np.empty((len(paths), *pydicom.dcmread(paths[0]).pixel_array.shape), dtype=np.float32)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        out[k] = ds.pixel_array
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1.0:
            out[k] *= np.float32(slope)
        if intercept != 0.0:
            out[k] += np.float32(intercept)
    return out


@pytest.mark.parametrize("name", list(SERIES))
def test_parallel_volume_identical_to_sequential_loop(name: str) -> None:
    folder = SERIES[name]
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    paths = files(folder)
    vol = load_series(paths)
    # slice order: along the normal, independent of the decoding
    ipp = np.array([[float(v) for v in pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient]
                    for p in vol.paths])
    assert np.all(np.diff(ipp @ vol.direction[2]) > 0)
    assert sorted(vol.paths) == sorted(paths)
    reference = sequential(vol.paths)
    assert vol.array.dtype == np.float32 and vol.array.shape == reference.shape
    assert np.array_equal(vol.array, reference)
    assert np.array_equal(vol.origin, ipp[0])


def adjacent(folder: Path, n: int, start: int) -> list[Path]:
    """``n`` slices of ``folder`` adjacent in Image Position (Patient) z, from ``start``."""
    by_z = sorted(files(folder), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    return by_z[start:start + n]


@pytest.mark.parametrize(("name", "min_slices", "forked"), [
    ("demo-jpegls-0314", 1, True), ("demo-jpegls-0314", 10_000, False),
    ("lidc-0314-implicit", 1, True), ("lidc-0314-implicit", 10_000, False),
], ids=["jpegls-processes", "jpegls-here", "implicit-processes", "implicit-here"])
def test_both_paths_agree(monkeypatch, name: str, min_slices: int, forked: bool) -> None:
    """12 slices decoded in forked processes or in this process give the same volume,
    compressed (JPEG-LS) and native (Implicit VR Little Endian) pixel data alike."""
    if not SERIES[name].is_dir():
        pytest.skip(f"real data not found at {SERIES[name]}")
    paths = adjacent(SERIES[name], 12, 100)
    monkeypatch.setattr(volume_module, "MIN_SLICES_PER_PROCESS", min_slices)
    started = []
    start = volume_module._start_decoding
    monkeypatch.setattr(volume_module, "_start_decoding", lambda p: started.append(start(p)) or started[-1])
    vol = load_series(list(reversed(paths)))
    assert (started[0] is not None) == (forked and len(volume_module.os.sched_getaffinity(0)) > 1)
    assert vol.paths == paths
    assert np.array_equal(vol.array, sequential(vol.paths))


def garble(fragment: bytes) -> bytes:
    """The JPEG-LS codestream with 1000 bytes in the middle of its entropy-coded segment
    replaced by 0x55 (no 0xFF, so no marker is made); SOI, SOF55, SOS and EOI are untouched."""
    assert fragment[:2] == b"\xff\xd8" and fragment[-2:] == b"\xff\xd9"  # SOI, EOI
    sos = fragment.index(b"\xff\xda")
    scan = sos + 2 + int.from_bytes(fragment[sos + 2:sos + 4], "big")
    mid = (scan + len(fragment)) // 2
    assert scan < mid - 500 and mid + 500 < len(fragment) - 2
    return fragment[:mid - 500] + b"\x55" * 1000 + fragment[mid + 500:]


@pytest.fixture
def garbled_series(tmp_path: Path) -> tuple[list[Path], Path, str]:
    """Copies of 40 adjacent demo JPEG-LS slices; the 20th (by position) has corrupt
    entropy-coded data. Returns (files, the corrupt file, its SOP Instance UID)."""
    if not DEMO.is_dir():
        pytest.skip(f"demo series not found at {DEMO}")
    out = []
    for p in adjacent(DEMO, 40, 100):
        out.append(tmp_path / p.name)
        shutil.copy(p, out[-1])
    bad = out[19]
    ds = pydicom.dcmread(bad)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    fragment = next(generate_frames(ds.PixelData, number_of_frames=1))
    jpeg_ls.decode_from_buffer(fragment)  # the original decodes
    broken = garble(fragment)
    with pytest.raises(RuntimeError, match="Invalid JPEG-LS stream"):  # and CharLS refuses the garbled one
        jpeg_ls.decode_from_buffer(broken)
    ds.PixelData = encapsulate([broken])
    ds.PatientName = "GARBLE^GRETA"
    ds.save_as(bad, enforce_file_format=True)
    return out, bad, str(ds.SOPInstanceUID)


@pytest.mark.parametrize("min_slices", [1, 10_000], ids=["processes", "here"])
def test_corrupt_entropy_coded_data_refused(garbled_series, monkeypatch, min_slices: int) -> None:
    paths, bad, uid = garbled_series
    monkeypatch.setattr(volume_module, "MIN_SLICES_PER_PROCESS", min_slices)
    with pytest.raises(UndecodableSlice) as info:
        load_series(list(reversed(paths)))
    message = str(info.value)
    assert isinstance(info.value, VolumeError)
    assert message.startswith(f"{bad.name} (SOP Instance UID {uid}): pixel data cannot be decoded")
    assert "JPEG-LS Lossless Image Compression" in message and "pyjpegls" in message
    assert message.endswith("pyjpegls): Decoding error: Invalid JPEG-LS stream, the encoded bit stream contains a "
                            "general structural problem")
    assert "\n" not in message and "GARBLE" not in message and "GRETA" not in message


def _state(pid: int) -> str:
    """The process state letter from /proc (``"gone"`` once reaped)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(line.split()[1] for line in f if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def _load_demo() -> None:
    load_series(files(DEMO))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_decoding_processes_end_with_their_parent() -> None:
    """A process killed while its forked decoders run (a worker killed with the node) takes
    them along: none is left waiting for work, holding the shared array."""
    if not DEMO.is_dir():
        pytest.skip(f"demo series not found at {DEMO}")
    processes = volume_module.decode_processes(len(files(DEMO)))
    if processes < 2:
        pytest.skip("one CPU: the series is decoded without processes")
    loader = mp.get_context("fork").Process(target=_load_demo, daemon=False)
    loader.start()
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(children) < processes and loader.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                children = [int(p) for p in Path(f"/proc/{loader.pid}/task/{loader.pid}/children").read_text().split()]
            time.sleep(0.01)
        assert len(children) == processes, "the loader finished before all its decoders started"
        os.kill(loader.pid, signal.SIGKILL)
        loader.join()
        deadline = time.monotonic() + 30  # a bound on waiting, not a timing under test
        while any(_state(c) not in ("Z", "X", "gone") for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {c: _state(c) for c in children if _state(c) not in ("Z", "X", "gone")} == {}
    finally:
        for c in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c, signal.SIGKILL)
        if loader.is_alive():
            loader.kill()


def test_first_file_a_localizer_of_another_size(tmp_path: Path, monkeypatch) -> None:
    """The forked decoders size their array by the first file; when that file is left out (a
    JPEG-LS localizer of 256 rows) the slices are still decoded, in this process."""
    if not DEMO.is_dir():
        pytest.skip(f"demo series not found at {DEMO}")
    monkeypatch.setattr(volume_module, "MIN_SLICES_PER_PROCESS", 1)
    paths = adjacent(DEMO, 12, 100)
    ds = pydicom.dcmread(paths[0])
    scout = np.ascontiguousarray(ds.pixel_array[:256])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.Rows = 256
    ds.compress(pydicom.uid.JPEGLSLossless, scout, encoding_plugin="pyjpegls")
    localizer = tmp_path / "localizer.dcm"
    ds.save_as(localizer, enforce_file_format=True)
    assert pydicom.dcmread(localizer).Rows == 256

    vol = load_series([localizer, *paths])
    assert vol.paths == paths
    assert np.array_equal(vol.array, sequential(paths))

"""The bundled demo CT (demo/ct_chest_LIDC-IDRI-0314): present, lossless, and sendable."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import peers
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless

BUNDLE = peers.REPO_ROOT / "demo" / "ct_chest_LIDC-IDRI-0314"


def _files() -> list[Path]:
    return sorted((BUNDLE / "image").glob("*.dcm"))


def test_bundle_is_complete_licensed_and_small() -> None:
    files = _files()
    assert len(files) == 275
    assert (BUNDLE / "LICENSE").is_file() and (BUNDLE / "ATTRIBUTION.md").is_file()
    assert "10.7937/K9/TCIA.2015.LO9QL9SX" in (BUNDLE / "ATTRIBUTION.md").read_text()
    assert sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file()) < 60_000_000
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless


def test_bundle_matches_shared_source(shared_data: Path) -> None:
    """Every 25th file against its source: same elements and UIDs, identical pixel values."""
    spec = importlib.util.spec_from_file_location("make_demo_data", BUNDLE.parent / "make_demo_data.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    plugins = mod.decoder_plugins()
    assert plugins
    for copy in _files()[::25]:
        src = peers.LIDC_SERIES / copy.name
        assert mod.verify_one(src, copy, plugins, run_dciodvfy=False) == []


@pytest.mark.integration
def test_storescu_sends_jpegls_bundle_to_orthanc(orthanc: peers.Orthanc, dcmtk: None) -> None:
    """DCMTK storescu sends JPEG-LS files only when told to propose JPEG-LS (-xt)."""
    first = pydicom.dcmread(_files()[0], stop_before_pixels=True)
    sent = peers.storescu("127.0.0.1", orthanc.dicom_port, BUNDLE / "image", aec=orthanc.aet,
                          propose="jpegls", required_only=True)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    inst = orthanc.instances_of_study(first.StudyInstanceUID)
    assert len(inst) == 275
    assert {i["transfer_syntax_uid"] for i in inst} == {JPEGLSLossless}
    back = pydicom.dcmread(orthanc.download_instance(inst[0]["id"], orthanc.workdir))
    original = pydicom.dcmread(BUNDLE / "image" / next(
        p.name for p in _files()
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == back.SOPInstanceUID))
    assert np.array_equal(back.pixel_array, original.pixel_array)

"""Fixtures for the infer tests: paths of the real data in ``<repo>/../shared/data``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LIDC = DATA / "ct_chest_LIDC-IDRI-0314" / "image"
CRLM = DATA / "ct_abdomen_CRLM-CT-1006" / "image"
TOTALSEG = DATA / "totalsegmentator_examples" / "example_ct_dicom"
GE_TILT = DATA / "edge_cases" / "dcm_qa_ct_GE_tilt" / "GE"
REPO = Path(__file__).resolve().parents[2]
LUNG_PACKAGE = REPO / "models" / "lung-unet"


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


@pytest.fixture(scope="session")
def lidc_files() -> list[Path]:
    if not LIDC.is_dir():
        pytest.skip(f"real data not found at {LIDC}")
    return files(LIDC)


@pytest.fixture
def lidc_subset(tmp_path: Path, lidc_files: list[Path]) -> list[Path]:
    """Copies of 12 consecutive-by-name LIDC files in a temporary folder (1 mm apart after sorting)."""
    import pydicom

    # pick 12 slices that are consecutive in position
    by_z = sorted(lidc_files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    chosen = by_z[100:112]
    out = []
    for i, p in enumerate(chosen):
        q = tmp_path / f"slice{i:03d}.dcm"
        shutil.copy(p, q)
        out.append(q)
    return out

"""Fixtures for the report tests: a real chest CT volume, a two-label lung-ish mask, manifests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import ModelManifest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LIDC = DATA / "ct_chest_LIDC-IDRI-0314" / "image"
TOTALSEG = DATA / "totalsegmentator_examples" / "example_ct_dicom"

ANATOMICAL_STRUCTURE = {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"}


def make_manifest(values: tuple[int, int] = (1, 2), **overrides) -> ModelManifest:
    """A lung model manifest: ``values[0]`` right lung, ``values[1]`` left lung."""
    data = {
        "name": "dicom-ai-lung",
        "version": "1.0.0",
        "spacing": (1.5, 1.5, 1.5),
        "window": (-1000.0, 400.0),
        "patch_size": (96, 96, 96),
        "network": {},
        "labels": [
            {
                "value": values[0],
                "name": "Right lung",
                "category": ANATOMICAL_STRUCTURE,
                "type": {"value": "3341006", "scheme": "SCT", "meaning": "Right lung"},
                "color": (0, 128, 255),
            },
            {
                "value": values[1],
                "name": "Left lung",
                "category": ANATOMICAL_STRUCTURE,
                "type": {"value": "44029006", "scheme": "SCT", "meaning": "Left lung"},
                "color": (255, 128, 0),
            },
        ],
    }
    data.update(overrides)
    return ModelManifest.model_validate(data)


def lung_mask(
    volume: Volume, values: tuple[int, int] = (1, 2), min_ml: float = 300.0
) -> np.ndarray:
    """Air (< -400 HU) inside the body, split at the middle column into two labels.

    The body is everything above -500 HU with its holes filled, slice by slice; the lungs are
    such holes, and of them only 3D connected regions larger than ``min_ml`` are kept (lungs and
    airways, not bowel gas). Columns left of the middle (patient right, LPS) get ``values[0]``.
    """
    hu = volume.array
    air = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[0]):
        air[k] = (hu[k] < -400) & ndimage.binary_fill_holes(hu[k] > -500)
    regions, _ = ndimage.label(air)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    air = (sizes * volume.voxel_volume_ml > min_ml)[regions]
    mask = np.zeros(hu.shape, dtype=np.uint8)
    half = hu.shape[2] // 2
    mask[:, :, :half][air[:, :, :half]] = values[0]
    mask[:, :, half:][air[:, :, half:]] = values[1]
    return mask


def sub_volume(volume: Volume, start: int, stop: int) -> Volume:
    """Slices ``start:stop`` of a volume, with origin and headers to match."""
    origin = volume.index_to_patient(np.array([[start, 0, 0]]))[0]
    return replace(
        volume,
        array=volume.array[start:stop],
        origin=origin,
        datasets=volume.datasets[start:stop],
        paths=volume.paths[start:stop],
    )


@pytest.fixture(scope="session")
def manifest() -> ModelManifest:
    return make_manifest()


@pytest.fixture(scope="session")
def small_volume(lidc_volume: Volume) -> Volume:
    """40 slices from the middle of the LIDC series (the lower lungs and the heart)."""
    return sub_volume(lidc_volume, 100, 140)


@pytest.fixture(scope="session")
def small_mask(lidc_mask: np.ndarray) -> np.ndarray:
    return lidc_mask[100:140]

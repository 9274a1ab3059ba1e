"""``fill_small_holes`` labels the in-slice holes of all slices at once and finds the holes
enclosed in 3D from how they overlap between slices; it must fill exactly what the per-slice
definition fills (``binary_fill_holes`` of the box, then of each axial slice, each hole by its
area and mean HU), on masks with many holes of every size made from a real CT."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from dicom_ai.infer.postprocess import fill_small_holes
from dicom_ai.infer.volume import load_series


def per_slice_fill_holes(mask, labels, spacing, max_mm2, image, below):
    """The definition: each label's bounding box, each axial slice on its own."""
    max_px = max_mm2 / (spacing[1] * spacing[2])
    for value in labels:
        where = np.argwhere(mask == value)
        if not where.size:
            continue
        box = tuple(slice(lo, hi + 1) for lo, hi in zip(where.min(0), where.max(0), strict=True))
        sub = mask[box]
        m = sub == value
        filled = ndi.binary_fill_holes(m)
        for z in range(m.shape[0]):
            holes = ndi.binary_fill_holes(m[z]) & ~m[z]
            lab, n = ndi.label(holes)
            if n:
                index = np.arange(1, n + 1)
                keep = ndi.sum(holes, lab, index=index) <= max_px
                if below is not None:
                    keep |= ndi.mean(image[box][z], lab, index=index) < below
                filled[z] |= np.isin(lab, index[keep])
        sub[filled & (sub == 0)] = value
    return mask


@functools.lru_cache(maxsize=1)
def _lidc(folder: Path):
    volume = load_series(sorted(folder.glob("*.dcm")))
    return volume.array[100:140].copy(), volume.spacing  # 40 slices through both lungs


@pytest.fixture
def ct(shared_data: Path):
    return _lidc(shared_data / "ct_chest_LIDC-IDRI-0314" / "image")


# (0.5, None): below one pixel, so only the holes enclosed in 3D are filled
@pytest.mark.parametrize("max_mm2, below", [(400.0, -500.0), (400.0, None), (20.0, -900.0), (5000.0, None), (0.5, None)])
def test_fill_small_holes_matches_the_per_slice_definition(ct, max_mm2, below):
    hu, spacing = ct
    body = ndi.binary_fill_holes(hu > -500, structure=np.ones((1, 3, 3), bool))
    mask = np.zeros(hu.shape, np.uint8)
    mask[(hu < -400) & body] = 1  # aerated lung: vessels and airway walls leave holes
    mask[hu > 150] = 2  # bone and contrast: rings with soft tissue inside
    assert ndi.label(ndi.binary_fill_holes(mask[20] == 1) & (mask[20] != 1))[1] > 10  # holes to fill
    expected = per_slice_fill_holes(mask.copy(), [1, 2], spacing, max_mm2, hu, below)
    got = fill_small_holes(mask.copy(), [1, 2], spacing, max_mm2, hu if below is not None else None, below)
    assert (expected != mask).sum() > 100  # the case fills something
    np.testing.assert_array_equal(got, expected)

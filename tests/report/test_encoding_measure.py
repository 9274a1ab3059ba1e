"""measure_labels compares the mask with each label once (the label check is the sum of those
counts) and computes the standard deviation in place; the numbers stay numpy's ``mean()``,
``std()``, ``min()`` and ``max()`` of the label's voxels to the last bit, on the full 275-slice
LIDC series, for few labels and many, and a value that is no label is still refused."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_ai.report.measure import measure_labels

from .conftest import ANATOMICAL_STRUCTURE, make_manifest


def _numpy(volume, mask, value: int) -> tuple[int, float, float, float, float]:
    inside = volume.array[mask == value].astype(np.float64)
    return inside.size, float(inside.mean()), float(inside.std()), float(inside.min()), float(inside.max())


def _bands(lidc_mask: np.ndarray, bands: int) -> np.ndarray:
    """The lungs cut into ``bands`` bands of slices, one label each (values 1..bands)."""
    mask = np.zeros_like(lidc_mask)
    edges = np.linspace(0, mask.shape[0], bands + 1).astype(int)
    for value, (start, stop) in enumerate(zip(edges[:-1], edges[1:], strict=True), start=1):
        mask[start:stop][lidc_mask[start:stop] != 0] = value
    return mask


def _manifest(bands: int):
    labels = [{"value": v, "name": f"Band {v}", "category": ANATOMICAL_STRUCTURE, "color": (v, 0, 0),
               "type": {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}} for v in range(1, bands + 1)]
    return make_manifest(labels=labels)


@pytest.mark.parametrize("bands", [3, 6])  # the mask check counts up to 4 labels, a histogram beyond
def test_measurements_of_many_labels_equal_numpy(lidc_volume, lidc_mask, bands) -> None:
    mask = _bands(lidc_mask, bands)
    result = measure_labels(lidc_volume, mask, _manifest(bands))
    assert list(result) == list(range(1, bands + 1))
    for value, m in result.items():
        assert (m.voxel_count, m.mean, m.std, m.minimum, m.maximum) == _numpy(lidc_volume, mask, value)
        assert m.voxel_count > 0


def test_the_mask_and_volume_are_left_unchanged(lidc_volume, lidc_mask, manifest) -> None:
    """The standard deviation overwrites a copy of the voxels, never the volume."""
    before_mask, before_hu = lidc_mask.copy(), lidc_volume.array[100].copy()
    measure_labels(lidc_volume, lidc_mask, manifest)
    assert np.array_equal(lidc_mask, before_mask) and np.array_equal(lidc_volume.array[100], before_hu)


def test_a_value_that_is_no_label_is_refused(lidc_volume, lidc_mask) -> None:
    """Band 3 of 3 is not in a manifest of 2 labels: its voxels make the counts fall short."""
    with pytest.raises(ValueError, match=r"\[3\]"):
        measure_labels(lidc_volume, _bands(lidc_mask, 3), _manifest(2))

"""Per-label measurements (dicom_ai.report.measure)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicom_ai.report.measure import check_mask, measure_labels

from .conftest import make_manifest


def test_measurements_match_numpy(small_volume, small_mask, manifest) -> None:
    result = measure_labels(small_volume, small_mask, manifest)
    assert list(result) == [1, 2]
    voxel_ml = float(np.prod(small_volume.spacing)) / 1000.0
    for value, m in result.items():
        inside = small_volume.array[small_mask == value].astype(np.float64)
        assert m.voxel_count == inside.size > 0
        assert m.volume_ml == pytest.approx(inside.size * voxel_ml, rel=1e-12)
        assert m.mean == pytest.approx(inside.mean(), rel=1e-9)
        assert m.std == pytest.approx(inside.std(), rel=1e-9)
        assert m.minimum == inside.min() and m.maximum == inside.max()
        assert m.maximum < -400  # the mask is air by construction


def test_empty_label_is_nan(small_volume, small_mask) -> None:
    manifest = make_manifest((1, 5))  # label 5 absent; label 2 of the mask would be unknown
    mask = np.where(small_mask == 1, 1, 0).astype(np.uint8)
    result = measure_labels(small_volume, mask, manifest)
    assert result[5].is_empty and result[5].volume_ml == 0.0
    assert math.isnan(result[5].mean) and math.isnan(result[5].std)


def test_check_mask_refuses(small_volume, small_mask, manifest) -> None:
    with pytest.raises(ValueError, match="shape"):
        check_mask(small_volume, small_mask[:-1], manifest)
    bad = small_mask.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"\[9\]"):
        check_mask(small_volume, bad, manifest)
    with pytest.raises(ValueError, match="integer"):
        check_mask(small_volume, small_mask.astype(np.float32), manifest)
    assert check_mask(small_volume, small_mask.astype(np.int64), manifest).dtype == np.uint8

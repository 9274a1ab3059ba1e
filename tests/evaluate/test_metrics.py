"""Evaluation metrics (MONAI) on masks and labels whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_ai.evaluate.metrics import (
    bootstrap_ci,
    classification_metrics,
    dice_per_label,
    segmentation_metrics,
    summary,
    surface_distances,
)


def test_dice_per_label():
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    a[:2] = 1
    b[:1] = 1
    d = dice_per_label(a, b, [1, 2])
    assert d[1] == pytest.approx(2 * 16 / (32 + 16))
    assert d[2] == 1.0


def test_surface_distances_of_nested_cubes_in_mm():
    """A 10-voxel cube inside a 14-voxel cube: every face 2 voxels away. With 2 mm slices the
    faces across slices are 4 mm away, the others 2 mm."""
    ref = np.zeros((20, 20, 20), bool)
    pred = ref.copy()
    ref[3:17, 3:17, 3:17] = True
    pred[5:15, 5:15, 5:15] = True
    hd95, msd = surface_distances(pred, ref, (1.0, 1.0, 1.0))
    assert 2.0 <= hd95 <= 2.0 * 3 ** 0.5 and 1.9 <= msd <= 2.6
    hd95_z, _ = surface_distances(pred, ref, (2.0, 1.0, 1.0))
    assert hd95_z >= 4.0
    assert surface_distances(pred, np.zeros_like(ref), (1.0, 1.0, 1.0)) == (None, None)
    m = segmentation_metrics(pred.astype(np.uint8), ref.astype(np.uint8), 1, (1.0, 1.0, 1.0))
    assert m["volume_ml"] == 1.0 and m["reference_ml"] == pytest.approx(2.7, abs=0.05)
    assert m["volume_difference_pct"] == pytest.approx(100 * (1000 - 2744) / 2744, abs=0.1)
    assert m["dice"] == pytest.approx(2 * 1000 / (1000 + 2744), abs=1e-4)


def test_classification_metrics_on_a_known_confusion_matrix():
    # reference: 3 of class a, 2 of class b; one a called b
    y = [0, 0, 0, 1, 1]
    p = [[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]]
    out = classification_metrics(y, p, ["a", "b"])
    assert out["accuracy"] == pytest.approx(0.8)
    assert out["confusion_matrix"] == [[2, 1], [0, 2]]
    a, b = out["per_class"]["a"], out["per_class"]["b"]
    assert a["sensitivity"] == pytest.approx(2 / 3, abs=1e-4) and a["specificity"] == 1.0 and a["precision"] == 1.0
    assert b["sensitivity"] == 1.0 and b["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert b["f1"] == pytest.approx(0.8)
    assert b["roc_auc"] == 1.0  # every b scored above every a
    lo, hi = out["accuracy_ci95"]
    assert 0.0 <= lo <= 0.8 <= hi <= 1.0


def test_bootstrap_ci_and_summary():
    assert bootstrap_ci([0.9]) is None
    lo, hi = bootstrap_ci([0.90, 0.95, 0.97, 0.99])
    assert 0.90 <= lo < 0.9525 < hi <= 0.99
    s = summary([0.9, None, 1.0])
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.95) and s["min"] == 0.9

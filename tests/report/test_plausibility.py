"""Plausibility of segmentation results (dicom_ai.report.plausibility), on the real LIDC chest CT.

The measurements come from :func:`measure_labels` on the LIDC series and the classical lung
mask of conftest (40 slices: right lung about 363 mL, left about 430 mL); the ranges are set
around or away from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicom_ai.package.manifest import load_manifest
from dicom_ai.report import measure_labels
from dicom_ai.report.plausibility import (
    ADULT_LEFT_RIGHT_LUNG_RATIO,
    ADULT_LUNG_VOLUME_ML,
    check_plausibility,
    reasons_by_label,
    with_adult_lung_plausibility,
)

from .conftest import make_manifest

REPO = Path(__file__).resolve().parents[2]


def _lung_manifest(right=None, left=None, ratio=None, **overrides):
    """make_manifest (1 right lung, 2 left lung) with volume ranges and a left / right ratio."""
    base = make_manifest()
    labels = [lb.model_dump() for lb in base.labels]
    labels[0]["plausible_volume_ml"] = right
    labels[1]["plausible_volume_ml"] = left
    ratios = [] if ratio is None else [{"numerator": 2, "denominator": 1, "range": ratio}]
    return make_manifest(labels=labels, plausible_volume_ratios=ratios, **overrides)


@pytest.fixture(scope="module")
def measured(small_volume, small_mask):
    m = measure_labels(small_volume, small_mask, make_manifest())
    right, left = m[1].volume_ml, m[2].volume_ml
    assert 200 < right < 600 and 200 < left < 600, (right, left)
    return right, left


def test_in_range_is_plausible(small_volume, small_mask, measured) -> None:
    right, left = measured
    manifest = _lung_manifest(right=(100, 1000), left=(100, 1000), ratio=(0.5, 2.0))
    assert check_plausibility(measure_labels(small_volume, small_mask, manifest), manifest) == []
    # bounds are included
    exact = _lung_manifest(right=(right, right + 1), left=(left - 1, left), ratio=(left / right, 9))
    assert check_plausibility(measure_labels(small_volume, small_mask, exact), exact) == []
    # no ranges, something found: nothing to say (the shipped 1.0.0 manifests)
    plain = make_manifest()
    assert check_plausibility(measure_labels(small_volume, small_mask, plain), plain) == []


def test_volume_out_of_range(small_volume, small_mask, measured) -> None:
    right, left = measured
    manifest = _lung_manifest(right=(1000, 6000), left=(10, 100))
    issues = check_plausibility(measure_labels(small_volume, small_mask, manifest), manifest)
    assert [(i.kind, i.labels) for i in issues] == [("volume", (1,)), ("volume", (2,))]
    assert issues[0].reason == f"Right lung volume {right:.0f} mL is below the plausible range 1000 to 6000 mL"
    assert issues[1].reason == f"Left lung volume {left:.0f} mL is above the plausible range 10 to 100 mL"
    assert reasons_by_label(issues) == {1: [issues[0].reason], 2: [issues[1].reason]}


def test_ratio_out_of_range(small_volume, small_mask, measured) -> None:
    right, left = measured
    manifest = _lung_manifest(right=(100, 6000), left=(100, 6000), ratio=(2.0, 3.0))
    (issue,) = check_plausibility(measure_labels(small_volume, small_mask, manifest), manifest)
    assert issue.kind == "ratio" and issue.labels == (2, 1)
    assert issue.reason == (f"Left lung / Right lung volume ratio {left / right:.2f} is outside the "
                            "plausible range 2 to 3")
    assert reasons_by_label([issue]) == {2: [issue.reason], 1: [issue.reason]}  # said in both groups


def test_all_empty_is_implausible(small_volume) -> None:
    empty = np.zeros(small_volume.shape, np.uint8)
    for manifest in (make_manifest(), _lung_manifest(right=(300, 6000), left=(300, 6000), ratio=(0.33, 3))):
        (issue,) = check_plausibility(measure_labels(small_volume, empty, manifest), manifest)
        assert (issue.kind, issue.labels, issue.reason) == ("empty", (1, 2), "no Right lung or Left lung found")
    allowed = make_manifest(plausible_empty=True)  # e.g. a lesion model that may find nothing
    assert check_plausibility(measure_labels(small_volume, empty, allowed), allowed) == []


def test_one_label_empty(small_volume, small_mask) -> None:
    only_right = np.where(small_mask == 1, 1, 0).astype(np.uint8)
    # without a volume range of its own, the empty lung is said by the ratio
    manifest = _lung_manifest(ratio=(0.33, 3.0))
    (issue,) = check_plausibility(measure_labels(small_volume, only_right, manifest), manifest)
    assert (issue.kind, issue.reason) == ("ratio", "Left lung / Right lung volume ratio undefined: Left lung not found")
    # with one, once, by its range
    manifest = _lung_manifest(right=(100, 6000), left=(300, 6000), ratio=(0.33, 3.0))
    (issue,) = check_plausibility(measure_labels(small_volume, only_right, manifest), manifest)
    assert (issue.kind, issue.labels) == ("volume", (2,))
    assert issue.reason == "Left lung not found (plausible volume 300 to 6000 mL)"


def test_adult_lung_defaults(lidc_volume, lidc_mask) -> None:
    """The defaults for new lung models: found by SNOMED CT type whatever the label values,
    and the real adult chest CT of the demo (LIDC-IDRI-0314, right upper lobe not aerated: left
    about twice the right) is plausible under them."""
    assert ADULT_LUNG_VOLUME_ML == (300.0, 6000.0) and ADULT_LEFT_RIGHT_LUNG_RATIO == (0.33, 3.0)
    shipped = load_manifest(REPO / "models" / "lung-unet")  # 1 left, 2 right
    assert all(lb.plausible_volume_ml is None for lb in shipped.labels) and not shipped.plausible_volume_ratios
    new = with_adult_lung_plausibility(shipped.model_copy(update={"version": "2.0.0"}))
    assert [lb.plausible_volume_ml for lb in new.labels] == [ADULT_LUNG_VOLUME_ML] * 2
    assert [(r.numerator, r.denominator, r.range) for r in new.plausible_volume_ratios] == [(1, 2, (0.33, 3.0))]
    assert load_manifest(REPO / "models" / "lung-unet") == shipped  # the shipped package is untouched

    manifest = with_adult_lung_plausibility(make_manifest())  # 1 right, 2 left
    assert [(r.numerator, r.denominator) for r in manifest.plausible_volume_ratios] == [(2, 1)]
    m = measure_labels(lidc_volume, lidc_mask, manifest)
    assert 1.8 < m[2].volume_ml / m[1].volume_ml < 2.3  # left / right, as the model card says
    assert check_plausibility(m, manifest) == []
    # both lungs in one label (a gross failure): the right lung is not found
    merged = np.where(lidc_mask > 0, 2, 0).astype(np.uint8)
    (issue,) = check_plausibility(measure_labels(lidc_volume, merged, manifest), manifest)
    assert issue.reason == "Right lung not found (plausible volume 300 to 6000 mL)"

    with pytest.raises(ValueError, match="expected one label of type SCT 3341006"):
        with_adult_lung_plausibility(make_manifest(labels=[make_manifest().labels[1].model_dump()]))

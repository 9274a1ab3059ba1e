"""Manifest schema of plausible ranges (Label.plausible_volume_ml, plausible_volume_ratios)."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from dicom_ai.package.manifest import ModelManifest, load_manifest, write_manifest

from ..report.conftest import make_manifest


def _labels(right=None, left=None) -> list[dict]:
    labels = [lb.model_dump() for lb in make_manifest().labels]  # 1 right lung, 2 left lung
    labels[0]["plausible_volume_ml"], labels[1]["plausible_volume_ml"] = right, left
    return labels


def test_ranges_round_trip(tmp_path) -> None:
    manifest = make_manifest(labels=_labels((300, 6000), (300, 6000)), plausible_volume_ratios=[
        {"numerator": 2, "denominator": 1, "range": [0.33, 3.0]}])
    write_manifest(tmp_path, manifest)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["labels"][0]["plausible_volume_ml"] == [300.0, 6000.0]
    assert data["plausible_volume_ratios"] == [{"numerator": 2, "denominator": 1, "range": [0.33, 3.0]}]
    assert load_manifest(tmp_path) == manifest
    # optional: a manifest without them (all shipped 1.0.0 manifests) still loads, nothing set
    plain = make_manifest()
    assert plain.labels[0].plausible_volume_ml is None and plain.plausible_volume_ratios == []
    assert plain.plausible_empty is False
    assert "plausible_volume_ml" not in json.loads(plain.model_dump_json(exclude_none=True))["labels"][0]


@pytest.mark.parametrize("bounds, message", [
    ((6000, 300), "lower bound must be below the upper bound"),
    ((300, 300), "lower bound must be below the upper bound"),
    ((-1, 300), "must not be negative"),
    ((0, math.inf), "must be finite"),
    ((math.nan, 300), "must be finite"),
])
def test_bad_volume_range_refused(bounds, message) -> None:
    with pytest.raises(ValidationError, match=message):
        make_manifest(labels=_labels(right=bounds))


@pytest.mark.parametrize("ratio, message", [
    ({"numerator": 2, "denominator": 1, "range": [3.0, 0.33]}, "lower bound must be below the upper bound"),
    ({"numerator": 2, "denominator": 1, "range": [-0.1, 3.0]}, "must not be negative"),
    ({"numerator": 2, "denominator": 2, "range": [0.33, 3.0]}, "to itself"),
    ({"numerator": 2, "denominator": 7, "range": [0.33, 3.0]}, r"\[7\] are not label values"),
    ({"numerator": 2, "denominator": 1}, "range"),
])
def test_bad_ratio_refused(ratio, message) -> None:
    with pytest.raises(ValidationError, match=message):
        make_manifest(plausible_volume_ratios=[ratio])


def test_ratio_refused_on_a_classification_model() -> None:
    classes = [{"index": 0, "name": "a", "code": {"value": "1", "scheme": "SCT", "meaning": "a"}},
               {"index": 1, "name": "b", "code": {"value": "2", "scheme": "SCT", "meaning": "b"}}]
    with pytest.raises(ValidationError, match="segmentation models only"):
        ModelManifest.model_validate({
            **make_manifest().model_dump(), "task": "classification", "labels": [], "classes": classes,
            "finding": {"value": "123014", "scheme": "DCM", "meaning": "Target Region"},
            "plausible_volume_ratios": [{"numerator": 2, "denominator": 1, "range": [0.33, 3.0]}]})


def test_a_2d_segmentation_network_must_run_slice_by_slice() -> None:
    """``spatial_dims`` 2 takes one canonical axial slice per window: a 3D patch, or other
    axes, would feed it what it cannot take."""
    base = json.loads(make_manifest().model_dump_json())
    base["network"] = {"arch": "monai.networks.nets.UNet",
                       "params": {"spatial_dims": 2, "in_channels": 1, "out_channels": 3,
                                  "channels": [8, 16], "strides": [2]}}
    base["patch_size"] = [1, 256, 256]
    assert ModelManifest.model_validate(base).patch_size == (1, 256, 256)
    for change in ({"patch_size": [16, 256, 256]}, {"axcodes": "RAS", "patch_size": [256, 256, 1]}):
        with pytest.raises(ValidationError, match="runs slice by slice"):
            ModelManifest.model_validate({**base, **change})

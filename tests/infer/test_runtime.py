"""The shipped lung model on real CT: volumes, laterality, package checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from dicom_ai.infer.postprocess import keep_largest_component
from dicom_ai.infer.runtime import SLICEWISE_BATCH, ModelPackageError, SegmentationModel
from dicom_ai.infer.volume import load_series

from .conftest import CRLM, LUNG_PACKAGE, REPO, TOTALSEG, files

pytestmark = pytest.mark.skipif(not (LUNG_PACKAGE / "manifest.json").is_file(), reason="no shipped lung model")


@pytest.fixture(scope="module")
def model() -> SegmentationModel:
    return SegmentationModel.load(LUNG_PACKAGE, device="cpu")


def test_manifest_labels(model):
    m = model.manifest
    by_name = {lab.name: lab for lab in m.labels}
    assert by_name["Left lung"].type.value == "44029006"
    assert by_name["Right lung"].type.value == "3341006"
    assert all(lab.category.value == "123037004" and lab.type.scheme == "SCT" for lab in m.labels)
    assert (LUNG_PACKAGE / m.model_card).is_file()
    assert (LUNG_PACKAGE / m.weights).stat().st_size < 5_000_000


def test_lidc_lungs(model, lidc_files):
    """Both lungs 0.5-5 L (this patient's right upper lobe is not aerated: ~0.9-1 L right lung),
    and the left lung lies at larger patient x (LPS: +x = patient left)."""
    v = load_series(lidc_files)
    mask, timings = model.predict(v)
    assert mask.dtype == np.uint8 and mask.shape == v.shape
    assert set(timings) == {"preprocess", "inference", "postprocess"}
    by_name = {lab.name: lab.value for lab in model.manifest.labels}
    centroid_x = {}
    for name, value in by_name.items():
        idx = np.argwhere(mask == value)
        ml = len(idx) * v.voxel_volume_ml
        assert 500 < ml < 5000, (name, ml)
        centroid_x[name] = v.index_to_patient(idx[::97]).mean(0)[0]
        # aerated lung
        assert -950 < float(v.array[mask == value].mean()) < -600
    assert centroid_x["Left lung"] > 30 > -30 > centroid_x["Right lung"]
    assert centroid_x["Left lung"] > centroid_x["Right lung"]
    assert float(np.sum(mask > 0)) * v.voxel_volume_ml > 2000


def test_volume_smaller_than_patch_is_padded(model):
    """20 slices of upper abdomen (JPEG 2000): fewer slices than the patch, hardly any lung."""
    v = load_series(files(TOTALSEG))
    mask, _ = model.predict(v)
    assert mask.shape == v.shape
    assert float(np.sum(mask > 0)) * v.voxel_volume_ml < 50


def test_slicewise_passes_of_any_size_give_the_same_scores():
    """The shipped slice-wise model scores each slice alone (instance norm included), so the
    CPU's passes of a few slices give the scores passes of 16 give, but for float32 rounding
    in the convolutions, and the same class everywhere."""
    model = SegmentationModel.load(REPO / "models" / "lung-unet-2d", device="cpu")
    assert 1 in model.manifest.patch_size and SLICEWISE_BATCH["cpu"] < 16
    v = load_series(files(CRLM))
    few, _, _ = model.scores(v)
    many, _, _ = model.scores(v, sw_batch_size=16)
    assert few.shape == many.shape and few.shape[1] > 16  # more slices than one pass of 16
    assert float((few - many).abs().max()) < 1e-4
    assert bool((few.argmax(0) == many.argmax(0)).all())


def test_checksum_mismatch_refused(tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(LUNG_PACKAGE, pkg)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["sha256"] = "0" * 64
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="SHA-256"):
        SegmentationModel.load(pkg, device="cpu")


def test_keep_largest_component():
    m = np.zeros((10, 10, 10), np.uint8)
    m[1:4, 1:4, 1:4] = 1
    m[7:9, 7:9, 7:9] = 1
    m[5, 5, 5] = 2
    keep_largest_component(m, [1, 2])
    assert m[8, 8, 8] == 0 and m[2, 2, 2] == 1 and m[5, 5, 5] == 2

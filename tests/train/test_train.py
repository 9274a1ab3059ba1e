"""Training labels, reference mapping, Dice, and a training smoke run (real data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicom_ai.infer.volume import load_series
from dicom_ai.train.data import (
    LUNG_SERIES,
    classical_reference,
    default_data_root,
    series_files,
)
from dicom_ai.train.labels import LEFT, RIGHT, classical_lung_labels, sample_label_map
from dicom_ai.train.loop import LUNG_SPACING, dice_per_label, train_lung_model

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TS = DATA / "totalsegmentator_examples"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="real data missing")


def test_default_data_root():
    assert default_data_root().resolve() == DATA.resolve()


def test_totalsegmentator_map_lands_on_the_right_organs():
    """RAS label map -> LPS DICOM grid: liver (5) on the patient's right (x < 0) and at liver HU,
    spleen (1) on the left (x > 0)."""
    v = load_series(series_files(TS / "example_ct_dicom"))
    lab = sample_label_map(v, TS / "example_seg_dicom.nii.gz")
    liver, spleen = lab == 5, lab == 1
    assert liver.sum() > 100_000 and spleen.sum() > 50_000
    assert v.index_to_patient(np.argwhere(liver)).mean(0)[0] < -30
    assert v.index_to_patient(np.argwhere(spleen)).mean(0)[0] > 30
    assert 40 < float(v.array[liver].mean()) < 150
    # this series shows the upper abdomen only: no lung lobes (10-14), a negative example
    assert not np.isin(lab, [10, 11, 12, 13, 14]).any()


@pytest.mark.parametrize("key,lo,hi", [("crlm", 700, 2000), ("lidc", 600, 3000)])
def test_classical_labels_left_is_patient_left(key, lo, hi):
    v = load_series(series_files(DATA / LUNG_SERIES[key].dicom_dir))
    ref = classical_reference(v, LUNG_SPACING)
    assert ref.shape == v.shape
    x_left = v.index_to_patient(np.argwhere(ref == LEFT)[::50]).mean(0)[0]
    x_right = v.index_to_patient(np.argwhere(ref == RIGHT)[::50]).mean(0)[0]
    assert x_left > 30 and x_right < -30
    for value in (LEFT, RIGHT):
        ml = float((ref == value).sum()) * v.voxel_volume_ml
        assert lo < ml < hi, (key, value, ml)
    # lung labels are aerated: mean HU of lung parenchyma
    assert -950 < float(v.array[ref > 0].mean()) < -600


def test_classical_labels_ignore_bowel_gas_and_outside_air():
    hu = np.full((30, 60, 60), -1000.0, dtype=np.float32)
    hu[:, 5:55, 5:55] = 40.0  # body
    hu[15:28, 15:45, 8:27] = -850  # right lung (low x)
    hu[15:28, 15:45, 33:52] = -850  # left lung (high x)
    hu[2:6, 25:30, 25:30] = -1000  # small gas bubble
    lab = classical_lung_labels(hu, (3.0, 3.0, 3.0), min_ml=5)
    assert set(np.unique(lab)) == {0, LEFT, RIGHT}
    assert (lab[20, 30, 40] == LEFT) and (lab[20, 30, 15] == RIGHT)
    assert lab[4, 27, 27] == 0 and lab[20, 2, 2] == 0


def test_dice_per_label():
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    a[:2] = 1
    b[:1] = 1
    d = dice_per_label(a, b, [1, 2])
    assert d[1] == pytest.approx(2 * 16 / (32 + 16))
    assert d[2] == 1.0


@pytest.mark.slow
def test_training_smoke(tmp_path):
    """Two steps on the two small series write a loadable, checksummed package."""
    from dicom_ai.infer.runtime import SegmentationModel

    report = train_lung_model(tmp_path / "pkg", holdout=["lidc"], iterations=2, seed=0)
    assert report["iterations"] == 2 and report["series"] == ["crlm", "totalseg"]
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert manifest["sha256"] == report["sha256"]
    model = SegmentationModel.load(tmp_path / "pkg", device="cpu")
    assert [lab.name for lab in model.manifest.labels] == ["Left lung", "Right lung"]

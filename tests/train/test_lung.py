"""The lung recipe: training labels, the data it may use, the slice sampler, a training smoke
run, the slice-wise runtime, and the shipped dicom-ai-lung 2.0.0 on clinical contours it never saw."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_ai.config import default_model_path
from dicom_ai.evaluate.metrics import dice_per_label
from dicom_ai.evaluate.reference import read_reference, sample_label_map
from dicom_ai.evaluate.series import load_volume, series_files
from dicom_ai.infer.postprocess import fill_small_holes
from dicom_ai.infer.runtime import SegmentationModel
from dicom_ai.infer.volume import load_series
from dicom_ai.package.network import SliceWise
from dicom_ai.train.data import classical_reference, default_data_root
from dicom_ai.train.labels import LEFT, RIGHT, classical_lung_labels
from dicom_ai.train.lung import (
    DESIGNS,
    EVALUATION_CASES,
    LUNG_CASES,
    LUNG_LABELS,
    lung_manifest,
    prepare,
    train_design,
)
from dicom_ai.train.package import write_package
from dicom_ai.train.segmentation import SegCase, SliceSampler

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TS = DATA / "totalsegmentator_examples"
LUNG1 = DATA / EVALUATION_CASES["lung1003"][0]
LUNG1_RT = DATA / EVALUATION_CASES["lung1003"][1]
SPACING_2D = DESIGNS["2d"].spacing

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="real data missing")


def test_default_data_root():
    assert default_data_root().resolve() == DATA.resolve()


def test_training_data_is_cc_by_and_never_the_evaluation_only_case():
    """Every training series exists; none is the non-commercial evaluation case; six patients
    with both lungs, from at least five scanner models."""
    for case in LUNG_CASES.values():
        assert (DATA / case.dicom_dir).is_dir(), case
        assert "EVALUATION-ONLY" not in case.dicom_dir and "NSCLC" not in case.dicom_dir
        # the first lines name the collection's licence (the TCIA policy text after them
        # mentions non-commercial licences in general)
        licence = (DATA / case.dicom_dir.split("/")[0] / "LICENSE").read_bytes()[:400].decode("latin-1")
        assert "NonCommercial" not in licence and "BY-NC" not in licence, case
    evaluation_only = (DATA / EVALUATION_CASES["lung1003"][0]).parent / "LICENSE"
    assert "NonCommercial" in evaluation_only.read_bytes()[:400].decode("latin-1")  # the check above can fail
    chest = {c.patient for c in LUNG_CASES.values() if c.role == "chest"}
    assert len(chest) == 6
    assert len({c.scanner.split(",")[0] for c in LUNG_CASES.values()}) >= 5


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


@pytest.mark.parametrize("key,lo,hi", [("crlm", 700, 2000), ("lidc0314", 600, 3000), ("a0002B70", 900, 2500)])
def test_classical_labels_left_is_patient_left(key, lo, hi):
    v = load_series(series_files(DATA / LUNG_CASES[key].dicom_dir))
    ref = classical_reference(v, SPACING_2D)
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


def test_prepared_case_is_cached_and_labelled(tmp_path):
    case = LUNG_CASES["a0002B40"]
    first = prepare(case, DATA, SPACING_2D, cache=tmp_path)
    assert len(list(tmp_path.glob("a0002B40_*.npz"))) == 1
    again = prepare(case, DATA, SPACING_2D, cache=tmp_path)
    assert np.array_equal(first.label, again.label) and first.hu.shape == again.hu.shape
    assert first.hu.shape[1:] == (221, 221)  # 512 x 0.65 mm at 1.5 mm
    # canonical columns run towards the patient's left: the left lung lies at higher column indices
    assert np.argwhere(first.label == LEFT)[:, 2].mean() > np.argwhere(first.label == RIGHT)[:, 2].mean()


def test_slice_sampler_draws_windowed_augmented_slices():
    hu = np.full((6, 40, 50), -1000.0, np.float32)
    hu[:, 5:35, 5:45] = 40.0
    label = np.zeros((6, 40, 50), np.uint8)
    hu[2:4, 10:30, 8:22], label[2:4, 10:30, 8:22] = -850, 2
    hu[2:4, 10:30, 28:42], label[2:4, 10:30, 28:42] = -850, 1
    case = SegCase("synthetic", "p", hu, label)

    def draw(seed, augment=True):
        s = SliceSampler([case], 64, 48, (-1000.0, 500.0), random.Random(seed), torch.Generator().manual_seed(seed),
                         augment=augment)
        return s.draw(8)

    x, y = draw(0)
    assert x.shape == y.shape == (8, 1, 48, 48)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0, 2.0} and (y > 0).any()
    x2, y2 = draw(0)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded: repeatable
    plain, lab = draw(1, augment=False)
    # without augmentation the sample is the slice, centred and resized by 48 / 64
    fg = lab[lab.flatten(1).any(1)]
    assert fg.shape[0] > 0 and (fg == 1).sum() > 0 and (fg == 2).sum() > 0


def test_slicewise_wrapper_runs_the_2d_network_per_slice():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    x = torch.rand(2, 1, 4, 16, 16)
    y = SliceWise(net)(x)
    assert y.shape == (2, 3, 4, 16, 16)
    assert torch.allclose(y[1, :, 2], net(x[1:2, :, 2])[0], atol=1e-6)


def test_fill_small_holes_fills_vessels_not_domes():
    mask = np.zeros((3, 40, 40), np.uint8)
    mask[:, 2:38, 2:38] = 1
    mask[1, 5:7, 5:7] = 0  # 4 px = 4 mm^2 at 1 mm: a vessel
    mask[0:2, 12:32, 12:32] = 0  # 400 px per slice, open through slice 0: a dome, not a hole in 3D
    mask[1, 20, 36] = 2  # another label's voxel stays
    fill_small_holes(mask, [1], (2.0, 1.0, 1.0), 100.0)
    assert (mask[1, 5:7, 5:7] == 1).all()
    assert (mask[0:2, 12:32, 12:32] == 0).all()
    assert mask[1, 20, 36] == 2


@pytest.mark.slow
def test_training_smoke(tmp_path):
    """A few steps of each design on two small cases write a loadable, checksummed package."""
    cases = [prepare(LUNG_CASES[k], DATA, DESIGNS["2d"].spacing, cache=tmp_path / "cache") for k in ("a0002B40", "crlm")]
    net, log = train_design(DESIGNS["2d"], cases, iterations=3)
    assert log["iterations"] == 3 and log["design"] == "2d"
    manifest = lung_manifest(DESIGNS["2d"], "0.0.1")
    write_package(tmp_path / "pkg", manifest, net, log)
    model = SegmentationModel.load(tmp_path / "pkg", device="cpu")
    assert model.manifest.sha256 and [lab.name for lab in model.manifest.labels] == ["Left lung", "Right lung"]
    volume = load_volume(DATA / LUNG_CASES["a0002B40"].dicom_dir)
    mask, timings = model.predict(volume)
    assert mask.shape == volume.shape and set(np.unique(mask)) <= {0, 1, 2}
    cases3d = [prepare(LUNG_CASES["a0002B40"], DATA, DESIGNS["3d"].spacing, cache=tmp_path / "cache")]
    net3d, log3d = train_design(DESIGNS["3d"], cases3d, iterations=2)
    assert log3d["iterations"] == 2


def test_shipped_2_0_0_on_clinical_contours_it_never_saw():
    """The default model on NSCLC-Radiomics LUNG1-003 (evaluation only) against the clinical
    RTSTRUCT, matched by ROI names without --map: Dice >= 0.95 per lung and above the 3 mm
    classical extraction of 1.0.0's recipe; left is the patient's left."""
    model = SegmentationModel.load(default_model_path(), device="cpu")
    assert model.manifest.version == "2.0.0" and model.manifest.patch_size[0] == 1
    volume = load_volume(LUNG1)
    mask, _ = model.predict(volume)
    ref = read_reference(LUNG1_RT, volume, LUNG_LABELS)
    assert set(ref.matched) == {1, 2}
    dice = dice_per_label(mask, ref.mask, [1, 2])
    classical = dice_per_label(classical_reference(volume, (3.0, 3.0, 3.0)), ref.mask, [1, 2])
    assert dice[1] >= 0.95 and dice[2] >= 0.95, dice
    assert dice[1] > classical[1] and dice[2] > classical[2], (dice, classical)
    assert volume.index_to_patient(np.argwhere(mask == 1)[::97]).mean(0)[0] > 30

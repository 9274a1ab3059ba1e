"""Body-region classifier: label rules, tilted-series reading, a short training run, and the
shipped package (models/body-region) on real series it must get right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_ai.evaluate.series import series_files
from dicom_ai.infer.runtime import ClassificationModel
from dicom_ai.infer.volume import VolumeError, load_series
from dicom_ai.package.manifest import load_manifest, sha256_of
from dicom_ai.train.region import (
    ABDOMEN,
    CHEST,
    IGNORE,
    REGION_SERIES,
    classify_path,
    load_region_case,
    region_labels_from_lung,
    region_manifest,
    slice_volumes,
    train_region_model,
)

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
SHIPPED = REPO / "models" / "body-region"
LIDC = DATA / "ct_chest_LIDC-IDRI-0314" / "image"
CRLM = DATA / "ct_abdomen_CRLM-CT-1006" / "image"
GE_HEAD = DATA / "edge_cases" / "dcm_qa_ct_GE_tilt" / "GE"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real data missing")


def test_label_rules_on_synthetic_masks():
    """Chest needs lung over 15 % of the body; abdomen needs no lung and to lie below the lungs;
    little lung, and no lung above the lungs (neck), are left out."""
    z = 8
    body = np.zeros((z, 20, 20), bool)
    body[:, 2:18, 2:18] = True  # 256 px body
    lung = np.zeros_like(body)
    lung[3, 5:7, 5:10] = True  # 10 px: 4 % -> transition
    lung[4:6, 5:15, 5:15] = True  # 100 px: 39 % -> chest
    lung[6, 5:10, 5:9] = True  # 20 px: 8 % -> apex, transition
    labels, fraction = region_labels_from_lung(lung, body, (5.0, 4.0, 4.0))
    assert labels.tolist() == [ABDOMEN, ABDOMEN, ABDOMEN, IGNORE, CHEST, CHEST, IGNORE, IGNORE]
    assert fraction[4] == pytest.approx(100 / 256)
    # no lung anywhere and no label map: nothing can be called abdomen
    labels, _ = region_labels_from_lung(np.zeros_like(body), body, (5.0, 4.0, 4.0))
    assert (labels == IGNORE).all()
    # no lung, label map with abdominal organs in slices 2-5 only
    organs = np.array([0, 0, 5000, 5000, 5000, 5000, 0, 0], float)
    labels, _ = region_labels_from_lung(np.zeros_like(body), body, (5.0, 4.0, 4.0), organs)
    assert labels.tolist() == [IGNORE, IGNORE, ABDOMEN, ABDOMEN, ABDOMEN, ABDOMEN, IGNORE, IGNORE]


@needs_data
def test_lidc_slice_labels_run_abdomen_then_chest():
    """LIDC-IDRI-0314 on the 5 mm model grid (inferior first): upper abdomen below the lung
    bases, then chest; the neck above the lung apices is left out."""
    case = load_region_case(REGION_SERIES["lidc"], DATA, region_manifest())
    assert case.x.shape == (55, 1, 64, 64) and case.y.shape == (55,)
    assert 0.0 <= float(case.x.min()) and float(case.x.max()) <= 1.0
    first_chest = int(np.flatnonzero(case.y == CHEST)[0])
    assert (case.y[:3] == ABDOMEN).all() and not (case.y[first_chest:] == ABDOMEN).any()
    assert (case.y == CHEST).sum() >= 25 and (case.y[-5:] == IGNORE).all()
    assert case.reference == CHEST


@needs_data
def test_tilted_head_series_is_read_slice_by_slice():
    files = series_files(GE_HEAD)
    with pytest.raises(VolumeError, match="gantry-tilted"):
        load_series(files)
    vols = slice_volumes(files)
    assert len(vols) == 28 and all(v.shape == (1, 512, 512) for v in vols)
    z = [float(v.origin @ v.direction[2]) for v in vols]
    assert z == sorted(z)


@needs_data
def test_short_training_writes_a_loadable_package(tmp_path):
    """A few steps write a TorchScript package that the runtime loads and that returns class
    probabilities summing to 1 on a real (held-out) series; the held-out scores are logged."""
    out = tmp_path / "pkg"
    report = train_region_model(out, DATA, holdout=["crlm", "ge-head-b"], iterations=6, batch_size=8, seed=1)
    assert report["iterations"] == 6 and "crlm" not in report["series"]
    assert report["parameters"] < 1_000_000
    manifest = load_manifest(out)
    assert manifest.runtime == "torchscript" and manifest.input == "slices" and manifest.task == "classification"
    assert manifest.weights == "model.ts" and manifest.sha256 == sha256_of(out / "model.ts") == report["sha256"]
    assert [c.code.value for c in manifest.classes] == ["69536005", "51185008", "113345001"]
    assert manifest.finding.value == "123014" and manifest.spacing == (5.0, 6.0, 6.0)
    model = ClassificationModel.load(out, device="cpu")
    result, timings = model.predict(load_series(series_files(CRLM)))
    assert len(result.probabilities) == 3
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert set(timings) == {"preprocess", "inference"}
    held = report["heldout"]
    assert held["series"]["n"] == 2 and held["slices"]["n"] == 42 + 14
    assert np.sum(held["slices"]["confusion"]) == held["slices"]["n"]
    log = json.loads((out / "training_log.json").read_text())
    assert log["holdout"] == ["crlm", "ge-head-b"]


# --- the shipped package ------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> ClassificationModel:
    return ClassificationModel.load(SHIPPED, device="cpu")


def test_shipped_package_is_complete_and_small(shipped):
    for name in ("manifest.json", "model.ts", "MODEL_CARD.md", "DATA_LICENSES.md", "training_log.json"):
        assert (SHIPPED / name).is_file(), name
    m = shipped.manifest
    assert m.name == "dicom-ai-body-region" and m.version == "1.0.0" and m.runtime == "torchscript"
    assert [c.name for c in m.classes] == ["head", "chest", "abdomen"]
    n_params = sum(p.numel() for p in shipped.network.parameters())
    assert 50_000 < n_params < 1_000_000
    log = json.loads((SHIPPED / "training_log.json").read_text())
    assert log["sha256"] == m.sha256 and log["parameters"] == n_params


@needs_data
def test_shipped_model_calls_lidc_chest(shipped):
    result, _ = shipped.predict(load_series(series_files(LIDC)))
    assert result.top.name == "chest", result.as_findings()
    assert result.probability > 0.5


@needs_data
@pytest.mark.parametrize(
    "rel",
    [
        "edge_cases/pydicom-wheel/J2K_pixelrep_mismatch.dcm",  # skull base, tilted plane
        "edge_cases/pydicom-data/693_UNCI.dcm",  # upper head
        "edge_cases/pylibjpeg-data/JPEG2000_ELSCINT1_JP2vsJ2K.dcm",  # face, dental artefacts
    ],
)
def test_shipped_model_calls_unseen_head_images_head(shipped, rel):
    """Head CT images from other scanners and patients, never trained on."""
    result, _ = shipped.predict(load_series([DATA / rel]))
    assert result.top.name == "head", result.as_findings()


@needs_data
@pytest.mark.parametrize(
    "rel,name",
    [("edge_cases/fo-dicom/CT1_J2KI", "chest"), ("edge_cases/pydicom-data/explicit_VR-UN.dcm", "abdomen")],
)
def test_shipped_model_on_unseen_body_images(shipped, rel, name):
    result, _ = shipped.predict(load_series([DATA / rel]))
    assert result.top.name == name, result.as_findings()


@needs_data
def test_classify_path_reads_the_tilted_head_series(tmp_path):
    """The tilted head series (training data of the shipped model) through the slice-by-slice
    fallback: head, and the probabilities sum to 1."""
    out = classify_path(SHIPPED, GE_HEAD)
    assert out["per_slice"] and out["slices"] == 28
    assert out["findings"]["class"] == "head"
    assert sum(out["findings"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


@needs_data
def test_cli_evaluate_region(capsys):
    from dicom_ai.train.__main__ import main

    assert main(["evaluate-region", str(SHIPPED), "--data-root", str(DATA), "--no-external", "--series", "ts-dicom"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["heldout"]["per_series"]["ts-dicom"]["reference"] == "abdomen"
    assert torch.tensor(out["heldout"]["slices"]["confusion"]).sum().item() == 8

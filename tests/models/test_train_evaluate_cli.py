"""The ML engineer's path on a site's own data, through the real CLI: `models train --dataset`
(fine-tuning, folds by patient, a case that cannot be read), and `models evaluate` on a
dataset of clinical contours and on one series."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nodeproc import NodeProcess
from peers import save_nifti

from dicom_ai.config import default_model_path
from dicom_ai.evaluate.series import load_volume
from dicom_ai.infer.runtime import SegmentationModel
from dicom_ai.package.manifest import load_manifest
from dicom_ai.train.data import classical_reference

pytestmark = pytest.mark.integration

LUNG1 = "ct_chest_NSCLC-Radiomics-LUNG1-003_EVALUATION-ONLY"
A0002 = "ct_chest_Lung-PET-CT-Dx-A0002"


def _ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_train_on_a_site_dataset_with_folds_and_a_bad_case(tmp_path, shared_data):
    """References are NIfTI label maps numbered 10 / 20 (mapped in the dataset file); the
    patients come from the headers; the missing case is reported and left out."""
    node = NodeProcess(tmp_path / "node")
    lines = ["task = 'segmentation'"]
    for name in ("image_8mm_kernel_B40f", "image_8mm_kernel_B70f"):
        series = shared_data / A0002 / name
        volume = load_volume(series)
        ref = classical_reference(volume, (3.0, 1.5, 1.5))
        save_nifti(np.where(ref == 1, 10, np.where(ref == 2, 20, 0)).astype(np.uint8), volume, tmp_path / f"{name}.nii.gz")
        lines += ["[[cases]]", f"series = '{series}'", f"reference = '{name}.nii.gz'",
                  "map = ['10=Left lung', '20=Right lung']"]
    crlm = shared_data / "ct_abdomen_CRLM-CT-1006" / "image"
    volume = load_volume(crlm)
    save_nifti(classical_reference(volume, (3.0, 1.5, 1.5)), volume, tmp_path / "crlm.nii.gz")
    lines += ["[[cases]]", f"series = '{crlm}'", "reference = 'crlm.nii.gz'"]
    lines += ["[[cases]]", "series = 'no/such/folder'", "reference = 'none.nii.gz'"]
    (tmp_path / "site.toml").write_text("\n".join(lines) + "\n")

    out = _ok(node.cli("models", "train", str(tmp_path / "pkg"), "--dataset", str(tmp_path / "site.toml"),
                       "--from", str(default_model_path()), "--folds", "2", "--iterations", "3", "--device", "cpu",
                       timeout=900))
    assert "case folder left out: FileNotFoundError" in out.stderr, out.stderr
    assert "loss" in out.stderr  # the progress bar shows the current loss
    log = json.loads((tmp_path / "pkg" / "training_log.json").read_text())
    assert [Path(s["case"]).name for s in log["skipped"]] == ["folder"]
    assert len(log["cases"]) == 3 and len({c["patient"] for c in log["cases"]}) == 2
    assert len(log["folds"]) == 2 and all(f["summary"]["Left lung"]["dice"]["n"] >= 1 for f in log["folds"])
    held = [set(f["patients"]) for f in log["folds"]]
    assert not held[0] & held[1]  # a patient is never in two folds
    manifest = load_manifest(tmp_path / "pkg")
    assert manifest.version == "2.0.0+site" and manifest.spacing == load_manifest(default_model_path()).spacing
    card = (tmp_path / "pkg" / "MODEL_CARD.md").read_text()
    assert "Fold 1" in card and "Fold 2" in card and "Cases left out" in card and "Limits" in card
    mask, _ = SegmentationModel.load(tmp_path / "pkg", device="cpu").predict(load_volume(crlm))
    assert mask.shape == volume.shape

    nothing = node.cli("models", "train", str(tmp_path / "none"), "--dataset", str(tmp_path / "bad.toml"))
    assert nothing.returncode == 1 and "no such file" in nothing.stderr


def test_evaluate_on_clinical_contours(tmp_path, shared_data):
    """LUNG1-003's clinical RTSTRUCT names its lungs Lung-Left / Lung-Right: matched without
    --map; Dice, HD95, MSD and volume difference per lung; JSON, Markdown and overlays."""
    node = NodeProcess(tmp_path / "node")
    (tmp_path / "clinical.csv").write_text(
        "series,reference\n"
        f"{shared_data / LUNG1 / 'image'},{shared_data / LUNG1 / 'rtstruct' / '1-1.dcm'}\n"
        f"{shared_data / A0002 / 'image_8mm_kernel_B40f'},{shared_data / LUNG1 / 'rtstruct' / '1-1.dcm'}\n")
    out = _ok(node.cli("models", "evaluate", "dicom-ai-lung", str(tmp_path / "clinical.csv"), "--out",
                       str(tmp_path / "eval"), timeout=600))
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["model"] == "dicom-ai-lung 2.0.0"
    good, wrong = result["cases"]
    assert "another series" in wrong["error"] or "none of which" in wrong["error"], wrong
    for lung in ("Left lung", "Right lung"):
        m = good["metrics"][lung]
        assert m["dice"] >= 0.95 and 0 < m["hd95_mm"] < 30 and 0 < m["msd_mm"] < 5, m
        assert abs(m["volume_difference_pct"]) < 10
    assert good["reference_parts"] == {"Left lung": "Lung-Left", "Right lung": "Lung-Right"}
    assert result["summary"]["Left lung"]["dice"]["n"] == 1
    md = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| Left lung |" in md and "not scored" in md
    assert len(good["overlays"]) == 3 and all((tmp_path / "eval" / "overlays" / f).is_file() for f in good["overlays"])
    assert "Dice" in out.stdout and "not scored" in out.stderr

    one = _ok(node.cli("models", "evaluate", str(default_model_path()), str(shared_data / LUNG1 / "image"),
                       "--reference", str(shared_data / LUNG1 / "rtstruct" / "1-1.dcm"), "--out", str(tmp_path / "one"),
                       timeout=600))
    assert "Right lung" in one.stdout
    single = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    assert single["cases"][0]["metrics"]["Right lung"]["dice"] == good["metrics"]["Right lung"]["dice"]


@pytest.mark.slow
def test_fine_tune_and_evaluate_a_classifier(tmp_path, shared_data, totalseg_series):
    """A classification dataset (CSV): fine-tune the shipped body-region classifier a few steps,
    then evaluate it: accuracy, per-class metrics and the confusion matrix."""
    node = NodeProcess(tmp_path / "node")
    rows = [(shared_data / A0002 / "image_8mm_kernel_B40f", "chest"), (shared_data / "ct_abdomen_CRLM-CT-1006" / "image", "chest"),
            (totalseg_series[0].parent, "abdomen"), (shared_data / "ct_chest_CPTAC-LSCC-C3N-00247" / "image", "chest")]
    (tmp_path / "cls.csv").write_text("series,class\n" + "".join(f"{s},{c}\n" for s, c in rows))
    region = Path(default_model_path()).parent / "body-region"
    _ok(node.cli("models", "train", str(tmp_path / "cls"), "--dataset", str(tmp_path / "cls.csv"), "--from",
                 str(region), "--iterations", "3", "--version", "1.0.1", timeout=600))
    assert load_manifest(tmp_path / "cls").version == "1.0.1"
    _ok(node.cli("models", "evaluate", str(tmp_path / "cls"), str(tmp_path / "cls.csv"), "--out", str(tmp_path / "ev"),
                 timeout=600))
    result = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    s = result["summary"]
    assert set(s["per_class"]) == {"head", "chest", "abdomen"} and len(s["confusion_matrix"]) == 3
    assert sum(map(sum, s["confusion_matrix"])) == 4 and 0 <= s["accuracy"] <= 1
    assert s["per_class"]["chest"]["cases"] == 3

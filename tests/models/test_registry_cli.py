"""Every ``dicom-ai models`` verb, run as the admin would, against a real index and
real model packages (the shipped lung model and its TorchScript / ONNX exports)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from nodeproc import NodeProcess
from peers import save_nifti

from dicom_ai.config import default_model_path
from dicom_ai.infer.runtime import SegmentationModel
from dicom_ai.infer.volume import load_series
from dicom_ai.report import build_seg

pytestmark = pytest.mark.integration


def _ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _versions(node: NodeProcess) -> list[str]:
    root = node.workdir / "var" / "models"
    assert not list(root.glob(".staging-*")), "a staging folder was left behind"
    return sorted(p.name for p in (root / "dicom-ai-lung").iterdir())


def _active(listing: str) -> list[str]:
    return re.findall(r"dicom-ai-lung\s*│\s*(\S+)\s*│[^\n]*│\s*active\s*│", listing)


def _set_version(package: Path, version: str) -> None:
    path = package / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] = version
    path.write_text(json.dumps(data))


def test_models_verbs_add_enable_test_disable_remove_history(tmp_path, shared_data):
    node = NodeProcess(tmp_path / "node")  # its configuration and index; the node itself is not needed
    cli = node.cli

    listing = _ok(cli("models", "list"))
    assert _active(listing) == ["2.0.0"], listing  # the shipped default, seeded on first use

    # TorchScript export as 2.1.0, added by alice: checked on the built-in sample, not active yet
    _ok(cli("models", "export", str(default_model_path()), str(tmp_path / "ts"), "--runtime", "torchscript",
            "--version", "2.1.0"))
    added = _ok(cli("models", "add", str(tmp_path / "ts"), "--user", "alice", timeout=180))
    assert "built-in sample (48 CT slices): Left lung" in added and "not active" in added, added
    again = cli("models", "add", str(tmp_path / "ts"))
    assert again.returncode == 1 and "already in the registry" in again.stderr

    # weights that do not match the manifest's sha256: refused, nothing kept
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "ts", bad)
    _set_version(bad, "2.2.0")
    weights = bad / "model.ts"
    weights.write_bytes(weights.read_bytes()[:-16] + bytes(16))
    refused = cli("models", "add", str(bad))
    assert refused.returncode == 1 and "SHA-256 of model.ts" in refused.stderr, refused.stderr
    assert _versions(node) == ["1.0.0", "2.0.0", "2.1.0"]

    # an ONNX export, zipped, as 2.3.0
    _ok(cli("models", "export", str(default_model_path()), str(tmp_path / "onnx" / "lung"), "--runtime", "onnx",
            "--version", "2.3.0", timeout=180))
    archive = tmp_path / "lung-onnx.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in (tmp_path / "onnx" / "lung").iterdir():
            zf.write(f, f"lung/{f.name}")
    assert "onnx" in _ok(cli("models", "add", str(archive), "--user", "bob", timeout=180))
    assert _versions(node) == ["1.0.0", "2.0.0", "2.1.0", "2.3.0"]

    # one active version per model
    _ok(cli("models", "enable", "dicom-ai-lung@2.1.0", "--user", "alice"))
    assert _active(_ok(cli("models", "list"))) == ["2.1.0"]
    shown = _ok(cli("models", "show", "dicom-ai-lung"))
    assert "dicom-ai-lung 2.1.0" in shown and "torchscript" in shown and "SCT 44029006 Left lung" in shown
    assert "dicom-ai-lung (default)" in shown  # the rule that routes series to it

    # test against a reference SEG made by the shipped model: the TorchScript export must agree
    crlm = sorted((shared_data / "ct_abdomen_CRLM-CT-1006" / "image").glob("*.dcm"))
    volume = load_series(crlm)
    native = SegmentationModel.load(default_model_path(), device="cpu")
    mask, _ = native.predict(volume)
    build_seg(volume, mask, native.manifest).save_as(tmp_path / "reference-seg.dcm")
    tested = _ok(cli("models", "test", "dicom-ai-lung", str(crlm[0].parent), "--reference",
                     str(tmp_path / "reference-seg.dcm"), "--user", "carol", timeout=180))
    assert "dicom-ai-lung 2.1.0 on 51 × 512 × 512" in tested and "inference" in tested
    dice = dict(re.findall(r"(Left lung|Right lung)\s*│[^│]*│[^│]*│\s*([\d.]+)", tested))
    assert dice == {"Left lung": "1.0000", "Right lung": "1.0000"}, tested

    # retire: the active version cannot be removed; disabled, it can, with its files
    blocked = cli("models", "remove", "dicom-ai-lung@2.1.0")
    assert blocked.returncode == 1 and "is active" in blocked.stderr
    _ok(cli("models", "disable", "dicom-ai-lung", "--user", "alice"))
    assert _active(_ok(cli("models", "list"))) == []
    _ok(cli("models", "remove", "dicom-ai-lung@2.1.0", "--user", "alice"))
    assert _versions(node) == ["1.0.0", "2.0.0", "2.3.0"]
    missing = cli("models", "enable", "dicom-ai-lung@2.1.0")
    assert missing.returncode == 1 and "no version '2.1.0'" in missing.stderr

    history = _ok(cli("models", "history", "dicom-ai-lung"))
    rows = re.findall(r"│\s*(\S+)\s*│\s*(add|enable|disable|remove|test)\s*│\s*dicom-ai-lung\s*│\s*(\S+)\s*│", history)
    assert rows == [("alice", "remove", "2.1.0"), ("alice", "disable", "2.1.0"), ("carol", "test", "2.1.0"),
                    ("alice", "enable", "2.1.0"), ("bob", "add", "2.3.0"), ("alice", "add", "2.1.0"),
                    ("dicom-ai", "add", "2.0.0"), ("dicom-ai", "add", "1.0.0")], history
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", history)


def test_models_test_against_a_nifti_reference(tmp_path, shared_data):
    """A NIfTI reference (10 = left, 20 = right, as another tool might number them) mapped with --map."""
    node = NodeProcess(tmp_path / "node")
    crlm = sorted((shared_data / "ct_abdomen_CRLM-CT-1006" / "image").glob("*.dcm"))
    volume = load_series(crlm)
    # in the precision `models test` runs it in ([worker] reduced_precision, on by default)
    mask, _ = SegmentationModel.load(default_model_path(), device="cpu", reduced_precision=True).predict(volume)
    reference = np.where(mask == 1, 10, np.where(mask == 2, 20, 0)).astype(np.uint8)
    reference[: len(crlm) // 2][reference[: len(crlm) // 2] == 20] = 0  # right lung only in the upper half
    save_nifti(reference, volume, tmp_path / "reference.nii.gz")
    out = node.cli("models", "test", str(default_model_path()), str(crlm[0].parent), "--reference",
                   str(tmp_path / "reference.nii.gz"), "--map", "10=Left lung", "--map", "20=Right lung",
                   timeout=180)
    text = _ok(out)
    dice = {k: float(v) for k, v in re.findall(r"(Left lung|Right lung)\s*│[^│]*│[^│]*│\s*([\d.]+)", text)}
    a, b = mask == 2, (mask == 2) & (np.arange(len(crlm)) >= len(crlm) // 2)[:, None, None]
    assert dice["Left lung"] == 1.0, text
    assert dice["Right lung"] == pytest.approx(2 * b.sum() / (a.sum() + b.sum()), abs=1e-4), text
    unknown = node.cli("models", "test", "no-such-model", str(crlm[0].parent))
    assert unknown.returncode == 1 and "no model 'no-such-model'" in unknown.stderr


@pytest.mark.parametrize("broken", ["no-manifest", "not-a-zip"])
def test_add_refuses_what_is_not_a_package(tmp_path, broken):
    node = NodeProcess(tmp_path / "node")
    target = tmp_path / broken
    if broken == "no-manifest":
        target.mkdir()
        (target / "model.pt").write_bytes(b"x")
    else:
        target.write_text("hello")
    out = node.cli("models", "add", str(target))
    assert out.returncode == 1 and "not a model package" in out.stderr, out.stderr


def test_train_add_and_test_a_classifier(tmp_path, shared_data):
    """The ML engineer's path: train the body-region classifier briefly with the project's code,
    add it (the sample run gives a class), and test it on a series (probabilities printed)."""
    node = NodeProcess(tmp_path / "node")
    _ok(subprocess.run([sys.executable, "-m", "dicom_ai.cli", "models", "train", str(tmp_path / "region"), "--task",
                        "region", "--iterations", "30", "--version", "1.1.0-dev"],
                       capture_output=True, text=True, timeout=300, check=False))
    added = _ok(node.cli("models", "add", str(tmp_path / "region"), timeout=180))
    assert re.search(r"built-in sample \(48 CT slices\): (head|chest|abdomen) \(\d\.\d\d\)", added), added
    # the shipped 1.0.0 is in the registry, not active: the first active version of the name is this one
    assert "added dicom-ai-body-region 1.1.0-dev (classification, torchscript): active" in added, added
    shown = _ok(node.cli("models", "show", "dicom-ai-body-region"))
    assert "dicom-ai-body-region 1.1.0-dev" in shown and "SCT 51185008 Thoracic structure" in shown
    assert "finding: DCM 123014 Target Region" in shown and "dicom-ai-body-region (default)" in shown
    crlm = shared_data / "ct_abdomen_CRLM-CT-1006" / "image"
    tested = _ok(node.cli("models", "test", "dicom-ai-body-region", str(crlm), timeout=180))
    probabilities = [float(p) for p in re.findall(r"(?:head|chest|abdomen)\S*\s*│\s*([\d.]+)", tested)]
    assert len(probabilities) == 3 and abs(sum(probabilities) - 1) < 0.01, tested
    assert "dicom-ai-body-region 1.1.0-dev on 51" in tested


def test_first_use_by_three_processes_at_once(tmp_path):
    """The node and CLI commands started together on a new data folder: the index is created once
    and the shipped models are registered once, with their folders, by whichever comes first."""
    node = NodeProcess(tmp_path / "node")
    procs = [subprocess.Popen([sys.executable, "-m", "dicom_ai.cli", "models", "list", "--config",
                               str(node.config_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in outs), outs
    assert all("dicom-ai-lung" in out for out, _, _ in outs)
    history = _ok(node.cli("models", "history"))
    assert len(re.findall(r"│\s*dicom-ai\s*│\s*add\s*│", history)) == 3, history
    root = node.workdir / "var" / "models"
    assert sorted(str(p.parent.relative_to(root)) for p in root.rglob("manifest.json")) == [
        "dicom-ai-body-region/1.0.0", "dicom-ai-lung/1.0.0", "dicom-ai-lung/2.0.0"]
    assert not list(root.glob(".staging-*"))

"""Issue 7: one model in three runtimes (MONAI state dict, TorchScript, ONNX) gives the same mask,
and a network that wants its input in other axes (axcodes) still gets the anatomy right."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_ai.config import default_model_path
from dicom_ai.infer.preprocess import from_network_axes, to_network_axes
from dicom_ai.infer.runtime import ModelPackageError, SegmentationModel, load_model
from dicom_ai.infer.volume import load_series
from dicom_ai.models.convert import convert_package
from dicom_ai.models.manifest import load_manifest, sha256_of, write_manifest
from dicom_ai.models.registry import sample_paths


@pytest.fixture(scope="module")
def sample():
    return load_series(sample_paths())


@pytest.fixture(scope="module")
def native_mask(sample):
    mask, _ = SegmentationModel.load(default_model_path(), device="cpu").predict(sample)
    return mask


@pytest.mark.parametrize("runtime", ["torchscript", "onnx"])
def test_exported_runtime_gives_the_native_mask(tmp_path, sample, native_mask, runtime):
    package = convert_package(default_model_path(), tmp_path / runtime, runtime)
    manifest = load_manifest(package)
    assert manifest.runtime == runtime and manifest.network is None
    assert manifest.sha256 == sha256_of(package / manifest.weights)
    assert (package / "MODEL_CARD.md").is_file()
    model = load_model(package, device="cpu")
    mask, _ = model.predict(sample)
    assert set(np.unique(native_mask)) == {0, 1, 2}
    differ = int((mask != native_mask).sum())
    assert differ <= native_mask.size * 1e-5, f"{differ} voxels differ from the MONAI state-dict model"
    assert model.nbytes > 1_000_000  # 0.6 M float32 parameters


def test_a_corrupted_onnx_file_is_refused_with_the_reason(tmp_path):
    package = convert_package(default_model_path(), tmp_path / "onnx", "onnx")
    manifest = load_manifest(package)
    (package / manifest.weights).write_bytes(b"not an onnx graph")
    with pytest.raises(ModelPackageError, match="SHA-256"):
        load_model(package, device="cpu")
    write_manifest(package, manifest.model_copy(update={"sha256": sha256_of(package / manifest.weights)}))
    with pytest.raises(ModelPackageError, match="not a usable ONNX model"):
        load_model(package, device="cpu")


class _RasWrapper(torch.nn.Module):
    """The lung U-Net behind RAS (x, y, z) axes, as a MONAI bundle's network would take them."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        canonical = from_network_axes(x, "RAS")
        return to_network_axes(self.net(canonical), "RAS")


def test_a_network_in_ras_axes_gets_the_same_lungs(tmp_path, sample, native_mask):
    native = SegmentationModel.load(default_model_path(), device="cpu")
    m = native.manifest
    x = torch.rand(1, 1, *reversed(m.patch_size))
    traced = torch.jit.trace(_RasWrapper(native.network).eval(), x, check_trace=False)
    package = tmp_path / "ras"
    package.mkdir()
    traced.save(str(package / "model.ts"))
    ras = m.model_copy(update={"runtime": "torchscript", "network": None, "weights": "model.ts",
                               "sha256": sha256_of(package / "model.ts"), "axcodes": "RAS",
                               "spacing": tuple(reversed(m.spacing)), "patch_size": tuple(reversed(m.patch_size))})
    write_manifest(package, ras)
    mask, _ = load_model(package, device="cpu").predict(sample)
    for value in (1, 2):  # left stays left: a flip would swap the labels and Dice would be ~0
        a, b = mask == value, native_mask == value
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.98, (value, dice)


def test_manifest_rejects_what_cannot_run(tmp_path):
    package = tmp_path / "p"
    shutil.copytree(default_model_path(), package)
    data = json.loads((package / "manifest.json").read_text())
    for change, message in [({"runtime": "monai", "network": None}, "needs a network"),
                            ({"axcodes": "RRS"}, "axcodes"),
                            ({"task": "classification"}, "at least two classes"),
                            ({"window": [500, -1000]}, "high must be above low"),
                            ({"network": {"arch": "os.system", "params": {}}}, "monai.networks.nets")]:
        (package / "manifest.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(ValueError, match=message):
            load_manifest(package)

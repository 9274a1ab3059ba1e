"""One model in three runtimes (MONAI state dict, TorchScript, ONNX) gives the same mask
(other axis orders, axcodes, are tested with the MONAI bundle import in tests/models)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dicom_ai.config import default_model_path
from dicom_ai.infer.runtime import ModelPackageError, SegmentationModel, load_model
from dicom_ai.infer.volume import load_series
from dicom_ai.models.convert import convert_package
from dicom_ai.models.registry import sample_paths
from dicom_ai.package.manifest import load_manifest, sha256_of, write_manifest


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
    # the source is validated in bfloat16; the exported float32 graph is not
    assert load_manifest(default_model_path()).autocast == "bfloat16" and manifest.autocast is None
    assert load_model(package, device="cpu", reduced_precision=True).precision == "float32"
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("runtime", ["monai", "torchscript", "onnx"])
def test_cpu_and_cuda_masks_agree(tmp_path, sample, native_mask, runtime):
    """The same package on CUDA gives the CPU mask (float16 upsampling on CUDA may move a few
    boundary voxels): Dice > 0.999 per label."""
    package = default_model_path() if runtime == "monai" else convert_package(default_model_path(), tmp_path / runtime, runtime)
    mask, _ = load_model(package, device="cuda").predict(sample)
    for value in (1, 2):
        a, b = mask == value, native_mask == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.999, value


def test_an_onnx_classifier_with_a_fixed_batch_of_one(tmp_path, sample):
    """ONNX graphs are often exported for batch 1: the slices are then fed one at a time, and the
    probabilities equal the TorchScript package's."""
    from dicom_ai.config import repo_root

    region = repo_root() / "models" / "body-region"
    reference = load_model(region, device="cpu")
    package = tmp_path / "onnx"
    shutil.copytree(region, package)
    (package / "model.ts").unlink()
    from dicom_ai.train.region import build_region_network

    eager = build_region_network()  # the exporter takes eager modules, not TorchScript
    eager.load_state_dict(reference.network.state_dict())
    with torch.no_grad():
        torch.onnx.export(eager.eval(), (torch.rand(1, 1, 64, 64),), str(package / "model.onnx"),
                          input_names=["image"], dynamo=True, external_data=False)
    write_manifest(package, reference.manifest.model_copy(update={
        "runtime": "onnx", "weights": "model.onnx", "sha256": sha256_of(package / "model.onnx")}))
    model = load_model(package, device="cpu")
    assert model.predictor.max_batch == 1
    got, _ = model.predict(sample)
    want, _ = reference.predict(sample)
    assert got.top.name == want.top.name
    assert np.allclose(got.probabilities, want.probabilities, atol=1e-4)


def test_the_torchscript_classifier_exports_to_onnx(tmp_path, sample):
    from dicom_ai.config import repo_root

    region = repo_root() / "models" / "body-region"
    package = convert_package(region, tmp_path / "onnx", "onnx")
    got, _ = load_model(package, device="cpu").predict(sample)
    want, _ = load_model(region, device="cpu").predict(sample)
    assert np.allclose(got.probabilities, want.probabilities, atol=1e-4)

"""MONAI bundle import (dicom_ai.models.bundle).

No bundle can be downloaded here, so the tests build one the way the MONAI bundle
specification describes (https://docs.monai.io/en/stable/mb_specification.html): metadata.json
with network_data_format, configs/inference.json with preprocessing / inferer /
postprocessing, models/model.ts, LICENSE, docs/README.md. Its TorchScript network is the
shipped lung U-Net behind a wrapper that takes and returns RAS-ordered patches, as a bundle's
network would; the imported package must segment the real LIDC chest CT like the native lung
package does, which checks the whole axis handling (axcodes, spacing, patch size order).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_ai.infer.preprocess import from_network_axes, network_axes, to_network_axes
from dicom_ai.infer.runtime import SegmentationModel
from dicom_ai.infer.volume import load_series
from dicom_ai.models.bundle import import_bundle, is_bundle
from dicom_ai.package.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
LUNG = REPO / "models" / "lung-unet"
LIDC = REPO.parent / "shared" / "data" / "ct_chest_LIDC-IDRI-0314" / "image"
SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"


class RasLungNet(torch.nn.Module):
    """The lung U-Net as a bundle network: input and logits (B, C, R, A, S) patches."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_network_axes(self.net(from_network_axes(x, "RAS")), "RAS")


def in_ras(values: tuple) -> list:
    """Canonical (S, P, L) values in RAS axis order."""
    perm, _ = network_axes("RAS")
    return [values[perm[k]] for k in range(3)]


def metadata(lung) -> dict:
    return {
        "schema": SCHEMA,
        "version": "0.5.3",
        "changelog": {"0.5.3": "TorchScript export", "0.1.0": "complete the model package"},
        "monai_version": "1.4.0",
        "pytorch_version": "2.4.0",
        "numpy_version": "1.26.4",
        "required_packages_version": {"nibabel": "5.2.1"},
        "name": "Lung CT segmentation",
        "task": "Left and right lung segmentation",
        "description": "A pre-trained model for volumetric (3D) segmentation of the left and right lung from CT",
        "authors": "dicom-ai test team",
        "copyright": "Copyright (c) dicom-ai test team",
        "data_source": "LIDC-IDRI (TCIA), CC BY 3.0",
        "data_type": "dicom",
        "image_classes": "single channel data, intensity scaled to [0, 1]",
        "label_classes": "single channel data, 1 left lung, 2 right lung, 0 everything else",
        "pred_classes": "3 channels OneHot data, channel 1 left lung, channel 2 right lung, channel 0 background",
        "eval_metrics": {"mean_dice": 0.97},
        "intended_use": "Research only, not for clinical use",
        "references": ["Ronneberger O. et al. U-Net (2015)", "Armato S. G. et al. LIDC-IDRI (2011)"],
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                "spatial_shape": in_ras(lung.patch_size), "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": 3,
                "spatial_shape": in_ras(lung.patch_size), "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": True, "channel_def": {"0": "background", "1": "left lung", "2": "right lung"}}},
        },
    }


def inference(lung) -> dict:
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/lungs",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "pixdim": in_ras(lung.spacing),
        "patch_size": in_ras(lung.patch_size),
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                        "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": lung.window[0], "a_max": lung.window[1],
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image"},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 4},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size", "sw_batch_size": 4,
                    "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "KeepLargestConnectedComponentd", "keys": "pred"},
            {"_target_": "scripts.lung.RemoveTracheaSeedsd", "keys": "pred"},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "resample": False},
        ]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def write_bundle(root: Path, meta: dict, config: dict | None, weights: Path | None, yaml_config: bool = False) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "docs").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    if config is not None:
        if yaml_config:
            import yaml

            (root / "configs" / "inference.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        else:
            (root / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    if weights is not None:
        (root / "models" / "model.ts").write_bytes(weights.read_bytes())
    (root / "LICENSE").write_text("                                 Apache License\n"
                                  "                           Version 2.0, January 2004\n")
    (root / "docs" / "README.md").write_text("# Lung CT segmentation\n\nBundle docs: RAS input, 3 mm voxels.\n")
    (root / "docs" / "data_license.txt").write_text("LIDC-IDRI: CC BY 3.0\n")
    return root


@pytest.fixture(scope="module")
def lung():
    return SegmentationModel.load(LUNG, device="cpu")


@pytest.fixture(scope="module")
def traced(lung, tmp_path_factory) -> Path:
    """The RAS-wrapped lung U-Net traced to TorchScript."""
    wrapper = RasLungNet(lung.network).eval()
    path = tmp_path_factory.mktemp("ts") / "model.ts"
    with torch.no_grad():
        torch.jit.trace(wrapper, torch.rand(1, 1, *in_ras(lung.manifest.patch_size))).save(str(path))
    return path


@pytest.fixture(scope="module")
def bundle(lung, traced, tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("b") / "lung_ct_segmentation", metadata(lung.manifest),
                        inference(lung.manifest), traced)


def check_manifest(manifest, lung_manifest) -> None:
    assert manifest.runtime == "torchscript" and manifest.weights == "model.ts"
    assert manifest.axcodes == "RAS"
    assert list(manifest.spacing) == in_ras(lung_manifest.spacing)
    assert list(manifest.patch_size) == in_ras(lung_manifest.patch_size)
    assert manifest.normalization == "window" and tuple(manifest.window) == tuple(lung_manifest.window)
    assert [(lb.value, lb.name, lb.type.value, lb.category.value) for lb in manifest.labels] == [
        (1, "Left lung", "44029006", "123037004"), (2, "Right lung", "3341006", "123037004")]
    assert manifest.modality == "CT" and manifest.body_region == "CHEST"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_import_maps_bundle_and_segments_like_native_model(lung, bundle, tmp_path):
    assert is_bundle(bundle) and not is_bundle(LUNG)
    out = tmp_path / "pkg"
    result = import_bundle(bundle, out)
    m = result.manifest
    check_manifest(m, lung.manifest)
    assert m.name == "lung-ct-segmentation" and m.version == "0.5.3"
    assert load_manifest(out) == m
    assert "Apache-2.0" in m.license and "DATA_LICENSE.txt" in m.license
    assert (out / "LICENSE").is_file() and (out / "DATA_LICENSE.txt").is_file()
    card = (out / "MODEL_CARD.md").read_text()
    assert "Research only, not for clinical use" in card and "Bundle docs: RAS input" in card
    mapped, unmapped = "\n".join(result.mapped), "\n".join(result.unmapped)
    assert "metadata version 0.5.3 -> version" in mapped
    assert "Spacingd pixdim [3.0, 3.0, 3.0] -> spacing" in mapped
    assert "KeepLargestConnectedComponentd" in mapped
    for expected in ("CropForegroundd", "RemoveTracheaSeedsd", "overlap 0.5"):
        assert expected in unmapped, expected
    assert not any("Orientationd" in line or "SNOMED" in line for line in result.unmapped)

    files = sorted(LIDC.glob("*.dcm"))
    if not files:
        pytest.skip(f"real data not found at {LIDC}")
    import pydicom

    by_z = sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    volume = load_series(by_z[::2])  # 138 slices, 2 mm apart: the whole chest, half the time
    native, _ = lung.predict(volume)
    imported, _ = SegmentationModel.load(out, device="cpu").predict(volume)
    scores = {v: dice(native == v, imported == v) for v in (1, 2)}
    print("Dice imported vs native:", scores)
    assert min(scores.values()) > 0.98, scores
    assert (native == 1).sum() > 1000 and (native == 2).sum() > 1000

    # the check has power: the same package told its network takes LAS (left-right mirrored)
    # swaps the lungs
    mirrored = m.model_copy(update={"axcodes": "LAS"})
    (out / "manifest.json").write_text(mirrored.model_dump_json(exclude_none=True))
    swapped, _ = SegmentationModel.load(out, device="cpu").predict(volume)
    wrong = {v: dice(native == v, swapped == v) for v in (1, 2)}
    print("Dice with axcodes LAS instead of RAS:", wrong)
    assert max(wrong.values()) < 0.5, wrong


def test_yaml_config_and_unknown_label(lung, traced, tmp_path):
    meta = metadata(lung.manifest)
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "background", "1": "left_lung",
                                                                    "2": "airway wall"}
    config = inference(lung.manifest)
    del config["preprocessing"]["transforms"][2]  # no Orientationd
    root = write_bundle(tmp_path / "b", meta, config, traced, yaml_config=True)
    result = import_bundle(root, tmp_path / "pkg", name="lung-yaml")
    m = result.manifest
    assert m.name == "lung-yaml" and m.axcodes == "RAS" and m.spacing == (3.0, 3.0, 3.0)
    assert m.labels[0].type.value == "44029006" and m.labels[1].type.value == "85756007"
    unmapped = "\n".join(result.unmapped)
    assert "no Orientationd" in unmapped and "'airway wall' has no SNOMED CT code" in unmapped


def test_not_a_bundle(tmp_path):
    (tmp_path / "configs").mkdir()
    with pytest.raises(ValueError, match="not a MONAI bundle"):
        import_bundle(tmp_path, tmp_path / "out")


def test_classification_bundle_refused(lung, traced, tmp_path):
    meta = metadata(lung.manifest)
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred.update({"type": "probabilities", "format": "classification", "num_channels": 2, "spatial_shape": [1, 1],
                 "channel_def": {"0": "normal", "1": "nodule"}})
    root = write_bundle(tmp_path / "b", meta, inference(lung.manifest), traced)
    with pytest.raises(ValueError, match="format 'classification'"):
        import_bundle(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_metadata_without_network_data_format(lung, traced, tmp_path):
    meta = metadata(lung.manifest)
    del meta["network_data_format"]
    root = write_bundle(tmp_path / "b", meta, inference(lung.manifest), traced)
    with pytest.raises(ValueError, match="network_data_format"):
        import_bundle(root, tmp_path / "out")


def test_bundle_with_a_state_dict_and_network_def(lung, tmp_path):
    """No model.ts: models/model.pt is loaded into the config's network_def (a MONAI UNet, literal
    arguments) and runs like the native package; anything else is refused with the reason."""
    from dicom_ai.models.registry import sample_paths

    config = inference(lung.manifest)
    for t in config["preprocessing"]["transforms"]:
        if t["_target_"] == "Orientationd":
            t["axcodes"] = "SPL"  # the shipped weights take the node's canonical axes
    config["pixdim"], config["patch_size"] = list(lung.manifest.spacing), list(lung.manifest.patch_size)
    root = write_bundle(tmp_path / "b", copy.deepcopy(metadata(lung.manifest)), config, None)
    (root / "models" / "model.pt").write_bytes((LUNG / "model.pt").read_bytes())
    result = import_bundle(root, tmp_path / "out")
    m = result.manifest
    assert (m.runtime, m.weights, m.axcodes) == ("monai", "model.pt", "SPL")
    assert m.network.arch == "monai.networks.nets.UNet" and m.network.params["channels"] == [16, 32, 64, 128]
    assert any("network_def monai.networks.nets.UNet -> network" in line for line in result.mapped)
    volume = load_series(sample_paths())
    native, _ = lung.predict(volume)
    imported, _ = SegmentationModel.load(tmp_path / "out", device="cpu").predict(volume)
    assert np.array_equal(native, imported)

    for change, message in [({"channels": "$[16, 32, 64, 128]"}, "expressions"),
                            ({"_target_": "os.system"}, "not a class of monai.networks.nets"),
                            (None, "needs a network_def")]:
        bad = copy.deepcopy(config)
        if change is None:
            del bad["network_def"], bad["network"]
        else:
            bad["network_def"].update(change)
        broken = write_bundle(tmp_path / f"bad-{len(message)}", copy.deepcopy(metadata(lung.manifest)), bad, None)
        (broken / "models" / "model.pt").write_bytes(b"state dict")
        with pytest.raises(ValueError, match=message):
            import_bundle(broken, tmp_path / f"out-{len(message)}")
    empty = write_bundle(tmp_path / "none", copy.deepcopy(metadata(lung.manifest)), config, None)
    with pytest.raises(ValueError, match="no models/model.ts .* and no models/model.pt"):
        import_bundle(empty, tmp_path / "out-none")


@pytest.mark.integration
def test_models_add_takes_a_bundle_folder(bundle, tmp_path):
    """``dicom-ai models add BUNDLE``: imported, checked on the built-in sample, and the admin is
    told what could not be mapped."""
    from nodeproc import NodeProcess

    node = NodeProcess(tmp_path / "node")
    out = node.cli("models", "add", str(bundle), "--user", "mlops", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not mapped: " in out.stdout and "CropForegroundd" in out.stdout, out.stdout
    assert "built-in sample (48 CT slices): Left lung" in out.stdout
    assert "added lung-ct-segmentation 0.5.3 (segmentation, torchscript): active" in out.stdout
    history = node.cli("models", "history", "lung-ct-segmentation").stdout
    assert "mlops" in history and "not mapped" in history

"""The network in bfloat16 where the package declares it validated and the CPU computes it
natively (``torch.autocast``), float32 otherwise; on a real CT the two masks agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dicom_ai.config import default_model_path
from dicom_ai.infer.runtime import SegmentationModel
from dicom_ai.infer.runtimes.base import native_autocast
from dicom_ai.infer.volume import load_series
from dicom_ai.package.manifest import ModelManifest, load_manifest

from .conftest import LUNG_PACKAGE

BF16_CPU = native_autocast(torch.device("cpu"))


def _conv_dtypes(model: SegmentationModel) -> set[torch.dtype]:
    """Install a hook on every convolution that records its output dtype; returns the set."""
    seen: set[torch.dtype] = set()
    assert model.network is not None
    for module in model.network.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Conv3d):
            module.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    return seen


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_bfloat16_mask_agrees_with_float32_on_a_real_ct(lidc_files) -> None:
    """LIDC-IDRI-0314, 275 slices, the shipped model: the convolutions really run in bfloat16,
    the mask comes back uint8 on the source grid, and each lung agrees with float32's to Dice
    >= 0.999 and volume within 0.2 % (measured: Dice 0.9997, +0.8 and +0.4 mL)."""
    volume = load_series(lidc_files)
    f32 = SegmentationModel.load(default_model_path(), device="cpu")
    b16 = SegmentationModel.load(default_model_path(), device="cpu", reduced_precision=True)
    assert (f32.precision, b16.precision) == ("float32", "bfloat16")
    seen32, seen16 = _conv_dtypes(f32), _conv_dtypes(b16)
    a, _ = f32.predict(volume)
    b, _ = b16.predict(volume)
    assert seen32 == {torch.float32} and seen16 == {torch.bfloat16}
    assert b.dtype == np.uint8 and b.shape == a.shape
    for label in (1, 2):
        x, y = a == label, b == label
        dice = 2 * np.count_nonzero(x & y) / (np.count_nonzero(x) + np.count_nonzero(y))
        assert dice >= 0.999, (label, dice)
        assert abs(np.count_nonzero(y) / np.count_nonzero(x) - 1) < 0.002


def test_float32_unless_asked_declared_and_native(monkeypatch) -> None:
    assert load_manifest(default_model_path()).autocast == "bfloat16"
    assert load_manifest(LUNG_PACKAGE).autocast is None  # 1.0.0 was never validated in it
    assert SegmentationModel.load(default_model_path(), device="cpu").precision == "float32"
    assert SegmentationModel.load(LUNG_PACKAGE, device="cpu", reduced_precision=True).precision == "float32"
    expected = "bfloat16" if BF16_CPU else "float32"
    assert SegmentationModel.load(default_model_path(), device="cpu", reduced_precision=True).precision == expected
    # a CPU without native bfloat16 (not this one, perhaps): float32, not an emulated autocast
    monkeypatch.setattr("dicom_ai.infer.runtime.native_autocast", lambda device, dtype: False)
    assert SegmentationModel.load(default_model_path(), device="cpu", reduced_precision=True).precision == "float32"


def test_autocast_needs_a_module_built_here() -> None:
    data = load_manifest(default_model_path()).model_dump()
    with pytest.raises(ValidationError, match="autocast 'bfloat16' needs runtime 'monai'"):
        ModelManifest.model_validate({**data, "runtime": "torchscript", "network": None})
    with pytest.raises(ValidationError, match="autocast"):
        ModelManifest.model_validate({**data, "autocast": "float16"})

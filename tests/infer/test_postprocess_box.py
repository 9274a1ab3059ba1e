"""Post-processing within bounding boxes (upsampling + argmax of the non-background box, largest
component within each label's box) gives the same mask, voxel for voxel, as the same steps on
the whole volume; on the real network output of the shipped lung model too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from dicom_ai.infer.postprocess import keep_largest_component, nonzero_box
from dicom_ai.infer.preprocess import from_canonical, upsample_argmax
from dicom_ai.infer.runtime import SegmentationModel
from dicom_ai.infer.volume import load_series

from .conftest import LUNG_PACKAGE


def whole_volume_upsample_argmax(logits: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Every output slice of the whole volume: model slices upsampled in-plane, each output slice
    the linear blend of its two neighbours where their argmax differs (the node's earlier code)."""
    C, d, h, w = logits.shape
    D, H, W = size
    out = torch.empty((D, H, W), dtype=torch.uint8)
    src = ((torch.arange(D, dtype=torch.float64) + 0.5) * (d / D) - 0.5).clamp(0, d - 1)
    lo = src.floor().long()
    frac = (src - lo.double()).tolist()
    planes = [F.interpolate(logits[:, k].float()[None], size=(H, W), mode="bilinear", align_corners=False)[0]
              for k in range(d)]
    index = [plane.argmax(0) for plane in planes]
    for z in range(D):
        a, f = int(lo[z]), frac[z]
        b = min(a + 1, d - 1)
        index_a = index[a]
        if b == a or f == 0.0:
            out[z] = index_a
            continue
        differ = index_a != index[b]
        result = index_a.clone()
        result[differ] = (planes[a][:, differ] * (1 - f) + planes[b][:, differ] * f).argmax(0)
        out[z] = result.to(torch.uint8)
    return out


def blob_logits(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random scores where class 0 wins except in two blobs well inside the volume."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g)
    logits[0] += 3.0
    _, d, h, w = shape
    logits[1, d // 3:d // 2, h // 4:h // 2, w // 3:2 * w // 3] += 6.0
    logits[2, d // 2:3 * d // 4, h // 2:3 * h // 4, w // 4:w // 2] += 6.0
    return logits


@pytest.mark.parametrize("slab", [2, 3, 16])
def test_box_upsampling_equals_full_trilinear(slab: int) -> None:
    logits = blob_logits((3, 12, 19, 17), seed=slab)
    size = (37, 61, 50)
    full = F.interpolate(logits[None], size=size, mode="trilinear", align_corners=False)[0].argmax(0)
    assert full.any() and not full.all()  # the box is smaller than the volume
    out = upsample_argmax(logits, size, slab=slab)
    assert out.dtype == torch.uint8
    assert torch.equal(out, full.to(torch.uint8))


def test_all_background_gives_zeros() -> None:
    logits = torch.zeros(3, 5, 6, 7)
    logits[0] = 1.0
    logits[2] = 1.0  # a tie with class 0 is class 0
    assert not upsample_argmax(logits, (11, 13, 9)).any()


def test_nonzero_box() -> None:
    m = np.zeros((6, 7, 8), np.uint8)
    assert nonzero_box(m) is None
    m[2, 3, 4] = 1
    m[4, 1, 6] = 2
    assert nonzero_box(m) == (slice(2, 5), slice(1, 4), slice(4, 7))


@pytest.fixture(scope="module")
def lidc_scores(lidc_files):
    if not (LUNG_PACKAGE / "manifest.json").is_file():
        pytest.skip("no shipped lung model")
    model = SegmentationModel.load(LUNG_PACKAGE, device="cpu")
    volume = load_series(lidc_files)
    logits, tf, _ = model.scores(volume)
    return model, volume, logits, tf


def test_real_network_output_same_mask(lidc_scores) -> None:
    """The shipped lung model on the 275-slice LIDC CT: the box-wise post-processing gives the
    mask of the whole-volume steps, voxel for voxel."""
    model, volume, logits, tf = lidc_scores
    mask = model.postprocess(logits, tf, volume)

    reference = from_canonical(whole_volume_upsample_argmax(logits, tf.shape), tf).contiguous().numpy()
    struct = ndi.generate_binary_structure(3, 3)
    for value in (1, 2):  # the package's class indices are its label values
        comp, n = ndi.label(reference == value, structure=struct)
        assert n > 1  # the raw output has stray components: the largest-component step is exercised
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        reference[(comp != 0) & (comp != int(np.argmax(sizes)))] = 0
    assert mask.shape == volume.shape
    assert int(np.count_nonzero(mask != reference)) == 0


def test_keep_largest_component_in_boxes_equals_whole_volume(lidc_scores) -> None:
    model, volume, logits, tf = lidc_scores
    raw = from_canonical(upsample_argmax(logits, tf.shape), tf).contiguous().numpy()
    ours = keep_largest_component(raw.copy(), [1, 2])
    struct = ndi.generate_binary_structure(3, 3)
    reference = raw.copy()
    for value in (1, 2):
        comp, _ = ndi.label(raw == value, structure=struct)
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        reference[(comp != 0) & (comp != int(np.argmax(sizes)))] = 0
    assert np.array_equal(ours, reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu(lidc_scores) -> None:
    """Upsampling and argmax on the GPU (the scores in float16, as the model gives them there)
    give the CPU's labels for the same float16 scores."""
    _, _, logits, tf = lidc_scores
    half = logits.half()
    on_gpu = upsample_argmax(half.cuda(), tf.shape).cpu()
    assert torch.equal(on_gpu, upsample_argmax(half, tf.shape))

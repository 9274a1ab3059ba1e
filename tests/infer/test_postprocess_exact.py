"""The shortcuts of the post-processing change no voxel: the in-plane classes looked up where the
model pixels around an output pixel settle them (``upsample_argmax``), and the largest component
found from the components of blocks (``keep_largest_component``), each against the plain
definition, on real CT data and on the cases that must take the slow path (near-ties of two
classes, equal components, two large components of blocks)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from dicom_ai.infer.postprocess import BLOCK, keep_largest_component
from dicom_ai.infer.preprocess import _argmax_classes, _linear_taps, upsample_argmax
from dicom_ai.infer.volume import load_series


def dense_separable(logits: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Every model slice upsampled in-plane at every output pixel (columns, then rows, the same
    float32 operations), each output slice the blend of its two model slices where their
    argmax differs: the definition ``upsample_argmax`` computes in its box."""
    C, d, h, w = logits.shape
    D, H, W = size
    y_lo, y_hi, y_w0, y_w1 = _linear_taps(h, H, 0, H, torch.device("cpu"))
    x_lo, x_hi, x_w0, x_w1 = _linear_taps(w, W, 0, W, torch.device("cpu"))
    p = logits.float()
    p = p.index_select(3, x_lo) * x_w0 + p.index_select(3, x_hi) * x_w1
    planes = p.index_select(2, y_lo) * y_w0[:, None] + p.index_select(2, y_hi) * y_w1[:, None]
    index = _argmax_classes(planes)
    src = ((torch.arange(D, dtype=torch.float64) + 0.5) * (d / D) - 0.5).clamp(0, d - 1)
    lo = src.floor().long()
    frac = src - lo.double()
    hi = (lo + 1).clamp(max=d - 1)
    out = index[lo]
    differ = (out != index[hi]) & ((hi != lo) & (frac != 0.0))[:, None, None]
    s, y, x = differ.nonzero(as_tuple=True)
    mixed = planes[:, lo[s], y, x] * (1.0 - frac).float()[s] + planes[:, hi[s], y, x] * frac.float()[s]
    out[s, y, x] = _argmax_classes(mixed)
    return out


@functools.lru_cache(maxsize=1)
def _lidc(folder: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    volume = load_series(sorted(folder.glob("*.dcm")))
    return volume.array, volume.spacing


@pytest.fixture
def lidc(shared_data: Path):
    folder = shared_data / "ct_chest_LIDC-IDRI-0314" / "image"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    return _lidc(folder)


def ct_scores(hu: np.ndarray, model_shape: tuple[int, int, int]) -> torch.Tensor:
    """Class scores on a coarse grid from a real CT: background, aerated lung (left and right
    halves of the image as classes 1 and 2), with the smooth transitions of a network's output."""
    t = torch.from_numpy(hu.astype(np.float32))[None, None]
    t = torch.nn.functional.interpolate(t, size=model_shape, mode="trilinear", align_corners=False)[0, 0]
    air = torch.sigmoid((-400.0 - t) / 60.0)
    body = torch.sigmoid((t + 950.0) / 30.0)
    lung = air * body
    left = torch.zeros_like(lung)
    left[..., model_shape[2] // 2:] = 1.0
    return torch.stack([1.0 - lung, lung * (1.0 - left), lung * left]) * 4.0


def test_upsampling_equals_dense_definition_on_a_real_ct(lidc) -> None:
    hu, _ = lidc
    logits = ct_scores(hu[60:200], (47, 171, 171))
    size = (140, 512, 512)
    out = upsample_argmax(logits, size)
    assert (out == 1).sum() > 10_000 and (out == 2).sum() > 10_000
    assert torch.equal(out, dense_separable(logits, size))


def test_near_ties_are_computed_not_looked_up() -> None:
    """Class 2 above class 1 by one unit in the last place at every model voxel: the blends
    may round the two to equal scores, which gives class 1 (ties to the lowest index)."""
    g = torch.Generator().manual_seed(3)
    one = torch.rand((9, 14, 13), generator=g) * 5.0 + 1.0
    two = torch.nextafter(one, torch.full_like(one, 100.0))
    logits = torch.stack([torch.zeros_like(one), one, two])
    size = (31, 47, 40)
    expected = dense_separable(logits, size)
    assert (expected == 1).any()  # a looked-up class 2 everywhere would be wrong here
    assert torch.equal(upsample_argmax(logits, size, slab=3), expected)


def largest_by_definition(mask: np.ndarray, labels: list[int]) -> np.ndarray:
    """Each label's largest 26-connected component over the whole volume (the first in scan
    order of equal ones, as ``np.argmax`` of the sizes)."""
    struct = ndi.generate_binary_structure(3, 3)
    out = mask.copy()
    for value in labels:
        comp, n = ndi.label(mask == value, structure=struct)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp != 0) & (comp != int(np.argmax(sizes)))] = 0
    return out


def test_largest_component_on_real_ct_masks(lidc) -> None:
    """Aerated lung and bone of a real CT: hundreds of components per label, touching blocks of
    components that do not touch."""
    hu, _ = lidc
    hu = hu[80:160]
    mask = np.zeros(hu.shape, np.uint8)
    mask[hu < -400] = 1  # lungs, airway, the air around the body: several large components
    mask[hu > 200] = 2  # bone: ribs, spine, many pieces
    mask[:, :, 256:][mask[:, :, 256:] == 1] = 3  # one lung and its half of the outside
    assert ndi.label(mask == 2, structure=ndi.generate_binary_structure(3, 3))[1] > 50
    expected = largest_by_definition(mask, [1, 2, 3])
    assert (expected != mask).sum() > 1000
    np.testing.assert_array_equal(keep_largest_component(mask.copy(), [1, 2, 3]), expected)


def test_largest_component_of_equal_ones_is_the_first() -> None:
    mask = np.zeros((30, 40, 50), np.uint8)
    mask[20:25, 30:35, 40:45] = 1  # later in scan order
    mask[2:7, 2:7, 2:7] = 1  # same size, first in scan order
    mask[12, 20, 20] = 1
    expected = largest_by_definition(mask, [1])
    assert expected[3, 3, 3] == 1 and expected[22, 32, 42] == 0
    np.testing.assert_array_equal(keep_largest_component(mask.copy(), [1]), expected)


def test_largest_component_in_touching_blocks() -> None:
    """Components one voxel apart share blocks: only the voxel labelling tells them apart."""
    b = BLOCK[2]
    mask = np.zeros((3 * b, 3 * b, 6 * b), np.uint8)
    mask[b:2 * b, b:2 * b, 1:3 * b - 1] = 1
    mask[b:2 * b, b:2 * b, 3 * b:5 * b] = 1  # gap of one column at 3b - 1: not touching
    mask[b, b, 3 * b] = 0  # the second one smaller
    expected = largest_by_definition(mask, [1])
    assert (expected != mask).sum() > 0
    np.testing.assert_array_equal(keep_largest_component(mask.copy(), [1]), expected)

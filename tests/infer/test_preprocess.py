"""Canonical orientation and resampling (synthetic volumes with known geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dicom_ai.infer.preprocess import (
    apply_window,
    canonical_transform,
    from_canonical,
    resample,
    resampled_shape,
    to_canonical,
    upsample_argmax,
)
from dicom_ai.infer.volume import Volume


def _volume(direction: np.ndarray, shape=(4, 5, 6), spacing=(3.0, 2.0, 1.0)) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(
        array=rng.normal(size=shape).astype(np.float32),
        spacing=spacing,
        origin=np.zeros(3),
        direction=np.asarray(direction, dtype=np.float64),
    )


def _patient_of_canonical(v: Volume, tf) -> np.ndarray:
    """Patient coordinates of the canonical grid's voxel centres (z, y, x, 3)."""
    S, R, C = v.shape
    idx = np.stack(np.meshgrid(np.arange(S), np.arange(R), np.arange(C), indexing="ij"), -1).astype(np.float64)
    xyz = v.index_to_patient(idx.reshape(-1, 3)).reshape(S, R, C, 3)
    t = torch.from_numpy(np.moveaxis(xyz, -1, 0))
    return np.moveaxis(to_canonical(t, tf).numpy(), 0, -1)


@pytest.mark.parametrize(
    "direction",
    [
        np.eye(3),  # axial, feet first
        [[-1, 0, 0], [0, -1, 0], [0, 0, -1]],  # axial, everything reversed
        [[0, 1, 0], [0, 0, -1], [-1, 0, 0]],  # sagittal
        [[1, 0, 0], [0, 0, -1], [0, 1, 0]],  # coronal
    ],
)
def test_canonical_axes_point_left_posterior_superior(direction):
    v = _volume(direction)
    tf = canonical_transform(v)
    xyz = _patient_of_canonical(v, tf)
    # along canonical axis 0 only z grows, axis 1 only y, axis 2 only x (LPS)
    dz = xyz[1:, :, :] - xyz[:-1, :, :]
    dy = xyz[:, 1:, :] - xyz[:, :-1, :]
    dx = xyz[:, :, 1:] - xyz[:, :, :-1]
    assert np.all(dz[..., 2] > 0) and np.allclose(dz[..., :2], 0)
    assert np.all(dy[..., 1] > 0) and np.allclose(dy[..., [0, 2]], 0)
    assert np.all(dx[..., 0] > 0) and np.allclose(dx[..., 1:], 0)
    # spacing follows the axes, and the round trip is exact
    steps = [np.abs(dz[..., 2]).max(), np.abs(dy[..., 1]).max(), np.abs(dx[..., 0]).max()]
    assert tf.spacing == pytest.approx(tuple(steps))
    t = torch.from_numpy(v.array)
    assert torch.equal(from_canonical(to_canonical(t, tf), tf), t)


def test_resample_and_window():
    assert resampled_shape((275, 512, 512), (1.0, 0.78125, 0.78125), (3.0, 3.0, 3.0)) == (92, 133, 133)
    t = torch.zeros(10, 10, 10)
    assert resample(t, (5, 6, 7)).shape == (5, 6, 7)
    lab = torch.zeros(10, 10, 10, dtype=torch.uint8)
    lab[5:] = 2
    out = resample(lab, (20, 20, 20), mode="nearest-exact")
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) == {0, 2}
    w = apply_window(torch.tensor([-2000.0, -1000.0, -250.0, 500.0, 3000.0]), (-1000, 500))
    assert torch.allclose(w, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_slab_upsampling_equals_full_trilinear():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 17, 13, generator=g)
    size = (31, 40, 29)
    full = F.interpolate(logits[None], size=size, mode="trilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(upsample_argmax(logits, size, slab=4), full.to(torch.uint8))

"""Training data on the model grid: HU and labels resampled with the torch code the runtime
uses (:mod:`dicom_ai.infer.preprocess`), and the location of the real data (``../shared/data``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dicom_ai.infer.preprocess import (
    canonical_transform,
    from_canonical,
    resample,
    resampled_shape,
    to_canonical,
)
from dicom_ai.infer.volume import Volume
from dicom_ai.train.labels import classical_lung_labels


def default_data_root() -> Path:
    """``<repo>/../shared/data``."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def hu_on_model_grid(volume: Volume, spacing: tuple[float, float, float]) -> np.ndarray:
    """HU on the canonical model grid, (z, y, x) float32 (trilinear, no window)."""
    tf = canonical_transform(volume)
    t = to_canonical(torch.from_numpy(volume.array), tf)
    size = resampled_shape(tf.shape, tf.spacing, spacing)
    return resample(t[None, None], size)[0, 0].numpy()


def labels_to_model_grid(labels: np.ndarray, volume: Volume, spacing: tuple[float, float, float]) -> np.ndarray:
    """Source-grid labels (slices, rows, columns) to the canonical model grid, nearest neighbour."""
    tf = canonical_transform(volume)
    t = to_canonical(torch.from_numpy(np.ascontiguousarray(labels)), tf)
    size = resampled_shape(tf.shape, tf.spacing, spacing)
    return resample(t, size, mode="nearest-exact").numpy().astype(np.uint8)


def labels_to_source_grid(labels: np.ndarray, volume: Volume) -> np.ndarray:
    """Canonical model-grid labels (z, y, x) back to the source grid, nearest neighbour."""
    tf = canonical_transform(volume)
    t = resample(torch.from_numpy(labels), tf.shape, mode="nearest-exact")
    return from_canonical(t, tf).contiguous().numpy().astype(np.uint8)


def classical_reference(volume: Volume, spacing: tuple[float, float, float]) -> np.ndarray:
    """Classical lung labels computed on the model grid and mapped to the source grid.

    Returns
    -------
    np.ndarray
        uint8 (slices, rows, columns): 0 background, 1 left lung, 2 right lung.
    """
    hu = hu_on_model_grid(volume, spacing)
    return labels_to_source_grid(classical_lung_labels(hu, spacing), volume)

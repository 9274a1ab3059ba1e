"""Training and evaluation data: the real CT series in ``../shared/data`` and their lung labels.

Each case is loaded with :func:`dicom_ai.infer.volume.load_series`, brought to the model's
canonical grid with the same torch code the runtime uses
(:func:`dicom_ai.infer.preprocess.preprocess_volume`), and labelled (0 background, 1 left lung,
2 right lung) from a TotalSegmentator label map where one exists, else by
:func:`dicom_ai.train.labels.classical_lung_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicom_ai.infer.preprocess import (
    apply_window,
    canonical_transform,
    from_canonical,
    resample,
    resampled_shape,
    to_canonical,
)
from dicom_ai.infer.volume import Volume, load_series
from dicom_ai.train.labels import classical_lung_labels, labels_from_totalsegmentator


@dataclass(frozen=True)
class SeriesSpec:
    """A training series: DICOM folder (relative to the data root) and its label source.

    ``totalseg`` is a TotalSegmentator v2 label map on the same patient space (relative path),
    or ``None`` for the classical extraction.
    """

    name: str
    dicom_dir: str
    totalseg: str | None = None


#: The training series of the default lung model (see models/lung-unet/MODEL_CARD.md).
LUNG_SERIES: dict[str, SeriesSpec] = {
    "lidc": SeriesSpec("lidc", "ct_chest_LIDC-IDRI-0314/image"),
    "crlm": SeriesSpec("crlm", "ct_abdomen_CRLM-CT-1006/image"),
    "totalseg": SeriesSpec(
        "totalseg",
        "totalsegmentator_examples/example_ct_dicom",
        "totalsegmentator_examples/example_seg_dicom.nii.gz",
    ),
}


def default_data_root() -> Path:
    """``<repo>/../shared/data``."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def series_files(folder: Path) -> list[Path]:
    """Regular files of a series folder (non-recursive), sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


@dataclass
class Case:
    """One training case on the model grid.

    Attributes
    ----------
    name:
        Series key.
    image:
        float32 (1, z, y, x), CT windowed to [0, 1] on the canonical model grid.
    label:
        uint8 (1, z, y, x), 0 background, 1 left lung, 2 right lung.
    """

    name: str
    image: np.ndarray
    label: np.ndarray


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


def load_case(
    spec: SeriesSpec, data_root: Path, spacing: tuple[float, float, float], window: tuple[float, float]
) -> Case:
    """Load, resample, window and label one training series.

    Parameters
    ----------
    spec:
        The series.
    data_root:
        Folder holding the series (``../shared/data``).
    spacing:
        Model spacing (z, y, x) in mm.
    window:
        (low, high) in HU.

    Returns
    -------
    Case
    """
    volume = load_series(series_files(Path(data_root) / spec.dicom_dir))
    hu = hu_on_model_grid(volume, spacing)
    if spec.totalseg:
        src = labels_from_totalsegmentator(volume, Path(data_root) / spec.totalseg)
        label = labels_to_model_grid(src, volume, spacing)
    else:
        label = classical_lung_labels(hu, spacing)
    image = apply_window(torch.from_numpy(hu), window).numpy().astype(np.float32)
    return Case(spec.name, image[None], label[None])


def volume_from_nifti(path: Path) -> Volume:
    """A :class:`Volume` from a NIfTI CT (RAS affine), for evaluation on NIfTI test data.

    The NIfTI voxel axes (i, j, k) become (columns, rows, slices); the affine columns are
    converted from RAS to LPS. ``datasets`` and ``paths`` stay empty.
    """
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)  # (i, j, k)
    aff = img.affine.copy()
    aff[:2, :] *= -1  # RAS -> LPS
    zooms = np.linalg.norm(aff[:3, :3], axis=0)
    dirs = aff[:3, :3] / zooms  # columns: directions of i, j, k
    array = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))  # (k, j, i)
    return Volume(
        array=array,
        spacing=(float(zooms[2]), float(zooms[1]), float(zooms[0])),
        origin=aff[:3, 3].astype(np.float64),
        direction=np.stack([dirs[:, 0], dirs[:, 1], dirs[:, 2]]).astype(np.float64),
    )

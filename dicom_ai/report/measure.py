"""Per-label measurements on a label mask: voxel count, volume, intensity statistics.

These numbers feed the TID 1500 measurement groups of the SR (PS3.16 TID 1411: Volume,
mean and standard deviation of the attenuation) and the worklist; they are computed once here
so that the SR and any other consumer agree to the last digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dicom_ai.infer.postprocess import nonzero_box
from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import Label, ModelManifest


@dataclass(frozen=True)
class LabelMeasurement:
    """Measurements of one label of a label mask.

    Attributes
    ----------
    label:
        The label (from the manifest).
    voxel_count:
        Number of voxels with ``mask == label.value``.
    volume_ml:
        ``voxel_count`` times the voxel volume, in mL (cm^3).
    mean:
        Mean of ``volume.array`` over the label, in the array's unit (HU for CT); ``nan`` if the
        label is empty.
    std:
        Population standard deviation (ddof=0) over the label, same unit; ``nan`` if empty.
    minimum, maximum:
        Extremes over the label, same unit; ``nan`` if empty.
    """

    label: Label
    voxel_count: int
    volume_ml: float
    mean: float
    std: float
    minimum: float
    maximum: float

    @property
    def is_empty(self) -> bool:
        """True when the label has no voxel."""
        return self.voxel_count == 0


def check_mask(volume: Volume, mask: np.ndarray, manifest: ModelManifest) -> np.ndarray:
    """Check that ``mask`` is a label mask on the grid of ``volume`` with the manifest's labels.

    Parameters
    ----------
    volume: dicom_ai.infer.volume.Volume
        The source volume; ``volume.array`` has shape (slices, rows, columns).
    mask: numpy.ndarray
        Integer label mask, shape (slices, rows, columns).
    manifest: dicom_ai.package.manifest.ModelManifest
        The model manifest whose ``labels`` give the allowed non-zero values.

    Returns
    -------
    numpy.ndarray
        ``mask`` as uint8 (no copy when it already is).

    Raises
    ------
    ValueError
        If the shape differs from ``volume.array``, the values are not integers in 0..255, or a
        non-zero value is not a label of the manifest.
    """
    mask = _uint8_mask(volume, mask)
    box = nonzero_box(mask)
    if box is None:
        return mask
    sub = mask[box]
    known = {label.value for label in manifest.labels}
    # every non-zero voxel holds a known label when the counts of the known labels add up (one
    # comparison per label: for a few labels cheaper than a histogram of the whole box)
    if len(known) <= 4 and sum(int(np.count_nonzero(sub == v)) for v in known) == int(np.count_nonzero(sub)):
        return mask
    present = np.flatnonzero(np.bincount(sub.ravel(), minlength=256))
    unknown = sorted(int(v) for v in present if v != 0 and int(v) not in known)
    if unknown:
        raise ValueError(f"mask holds values {unknown} that are not labels of {manifest.name}")
    return mask


def _uint8_mask(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """The shape and value range part of :func:`check_mask`: ``mask`` as uint8 (no copy when
    it already is).

    Raises
    ------
    ValueError
        If the shape differs from ``volume.array`` or the values are not integers in 0..255.
    """
    mask = np.asarray(mask)
    if mask.shape != volume.array.shape:
        raise ValueError(
            f"mask shape {mask.shape} differs from the volume shape {volume.array.shape} "
            "(slices, rows, columns)"
        )
    if mask.dtype != np.uint8:
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
            raise ValueError(f"mask must hold integer labels, got dtype {mask.dtype}")
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError("mask values must lie in 0..255")
        mask = mask.astype(np.uint8)
    return mask


def measure_labels(
    volume: Volume, mask: np.ndarray, manifest: ModelManifest
) -> dict[int, LabelMeasurement]:
    """Measure every label of the manifest on the mask.

    Parameters
    ----------
    volume: dicom_ai.infer.volume.Volume
        Source volume; ``volume.array`` float32 of shape (slices, rows, columns) in HU for CT,
        ``volume.spacing`` in mm.
    mask: numpy.ndarray
        uint8 label mask of shape (slices, rows, columns) on the same grid.
    manifest: dicom_ai.package.manifest.ModelManifest
        Gives the labels; every label is measured, also those absent from the mask.

    Returns
    -------
    dict[int, LabelMeasurement]
        Keyed by ``Label.value``, in the order of ``manifest.labels``.

    Raises
    ------
    ValueError
        See :func:`check_mask`.
    """
    mask = _uint8_mask(volume, mask)
    voxel_ml = volume.voxel_volume_ml
    result: dict[int, LabelMeasurement] = {}
    # Work within the box of the labelled voxels: the voxels of a label come out in the same
    # (C) order as from the whole array, so the statistics are the same to the last bit.
    box = nonzero_box(mask)
    within = box or (slice(0, 0),) * 3
    sub, image = mask[within], volume.array[within]
    counted = 0
    for label in manifest.labels:
        picked = image[sub == label.value]
        n = int(picked.size)
        counted += n
        if n:
            # float32 -> float64 is exact: the extremes need no conversion
            vmin, vmax = float(picked.min()), float(picked.max())
            mean, std = _mean_std(picked.astype(np.float64))
        else:
            mean = std = vmin = vmax = math.nan
        result[label.value] = LabelMeasurement(
            label=label,
            voxel_count=n,
            volume_ml=n * voxel_ml,
            mean=mean,
            std=std,
            minimum=vmin,
            maximum=vmax,
        )
    # every labelled voxel holds a label of the manifest when the labels' counts add up; the
    # full check otherwise, which names the values that are not labels
    if box is not None and counted != int(np.count_nonzero(sub)):
        check_mask(volume, mask, manifest)
    return result


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) of a 1-D float64 array, overwriting it.

    The same operations in the same order as ``values.mean()`` and ``values.std()`` (pairwise
    sums, then the mean subtracted and squared element by element), so the same results to the
    last bit, without the temporary array ``values.std()`` allocates.
    """
    n = values.size
    mean = np.add.reduce(values) / n
    np.subtract(values, mean, out=values)
    np.square(values, out=values)
    return float(mean), math.sqrt(np.add.reduce(values) / n)

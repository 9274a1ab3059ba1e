"""Evaluation of a segmentation model package against a reference, Dice per label."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dicom_ai.infer.runtime import SegmentationModel
from dicom_ai.infer.volume import Volume, load_series
from dicom_ai.train.data import classical_reference, series_files, volume_from_nifti
from dicom_ai.train.labels import labels_from_totalsegmentator
from dicom_ai.train.loop import dice_per_label


def load_reference(reference: np.ndarray | Path | str, volume: Volume, spacing: tuple[float, float, float]) -> np.ndarray:
    """Reference labels on ``volume``'s grid.

    Parameters
    ----------
    reference:
        ``"classical"`` (the classical HU extraction, :func:`dicom_ai.train.labels.classical_lung_labels`),
        a path to a TotalSegmentator v2 label map (``.nii``/``.nii.gz``, lobes merged to left/right
        lung), a path to a ``.npy`` label array, or an array (slices, rows, columns).
    volume:
        The evaluated volume.
    spacing:
        Model spacing (z, y, x) in mm, used by the classical extraction.

    Returns
    -------
    np.ndarray
        uint8 (slices, rows, columns).
    """
    if isinstance(reference, np.ndarray):
        ref = reference
    elif str(reference) == "classical":
        ref = classical_reference(volume, spacing)
    else:
        path = Path(reference)
        if path.name.endswith((".nii", ".nii.gz")):
            ref = labels_from_totalsegmentator(volume, path)
        elif path.suffix == ".npy":
            ref = np.load(path)
        else:
            raise ValueError(f"reference {reference!r}: expected 'classical', a .nii(.gz) or .npy file, or an array")
    if ref.shape != volume.shape:
        raise ValueError(f"reference shape {ref.shape} differs from the volume's {volume.shape}")
    return ref.astype(np.uint8)


def evaluate_model(
    package_dir: Path,
    series_dir: Path,
    reference: np.ndarray | Path | str = "classical",
    device: str | None = None,
) -> dict:
    """Run a model package on a series and score it against a reference, Dice per label.

    Parameters
    ----------
    package_dir:
        Model package folder (``manifest.json``, weights).
    series_dir:
        Folder with the DICOM files of one series, or a NIfTI CT file (RAS affine).
    reference:
        See :func:`load_reference`; default the classical extraction.
    device:
        Torch device; default CUDA when available, else CPU.

    Returns
    -------
    dict
        ``dice`` (label name -> Dice on the source grid), ``volume_ml`` (label name ->
        predicted volume, mL), ``reference_ml`` (label name -> reference volume, mL),
        ``timings`` (s: load, preprocess, inference, postprocess), ``shape`` (slices, rows,
        columns), ``model`` (name and version).
    """
    t0 = time.perf_counter()
    series_dir = Path(series_dir)
    if series_dir.is_file() and series_dir.name.endswith((".nii", ".nii.gz")):
        volume = volume_from_nifti(series_dir)
    else:
        volume = load_series(series_files(series_dir))
    load_s = time.perf_counter() - t0
    model = SegmentationModel.load(Path(package_dir), device=device)
    m = model.manifest
    mask, timings = model.predict(volume)
    ref = load_reference(reference, volume, tuple(m.spacing))
    dice = dice_per_label(mask, ref, [lab.value for lab in m.labels])
    ml = volume.voxel_volume_ml
    return {
        "model": f"{m.name} {m.version}",
        "series": str(series_dir),
        "shape": list(volume.shape),
        "dice": {lab.name: round(dice[lab.value], 4) for lab in m.labels},
        "volume_ml": {lab.name: round(float((mask == lab.value).sum()) * ml, 1) for lab in m.labels},
        "reference_ml": {lab.name: round(float((ref == lab.value).sum()) * ml, 1) for lab in m.labels},
        "timings": {"load": round(load_s, 2), **{k: round(v, 2) for k, v in timings.items()}},
    }

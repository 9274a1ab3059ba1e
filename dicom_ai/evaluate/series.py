"""A series from what a user names: a DICOM folder, DICOM files, a NIfTI CT, or a Series
Instance UID in the node's cache. Written once here for the CLI, training and evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

from dicom_ai.infer.volume import Volume, load_series

#: Looks up the files of a Series Instance UID in the cache (empty when unknown).
CacheLookup = Callable[[str], list[Path]]


def is_nifti(path: Path | str) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` / ``.nii.gz``)."""
    return str(path).lower().endswith((".nii", ".nii.gz"))


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and every file under the folders given (recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        else:
            out.append(p)
    return out


def series_files(target: str | Path, lookup: CacheLookup | None = None) -> list[Path]:
    """The DICOM files of a series: the files under a folder (recursively, sorted), a file, or
    the cached files of a Series Instance UID (``lookup``).

    Raises
    ------
    FileNotFoundError
        If ``target`` is neither an existing path nor a Series Instance UID ``lookup`` knows.
    """
    path = Path(target)
    if path.exists():
        files = expand_paths([path])
    else:
        files = lookup(str(target)) if lookup is not None else []
    if not files:
        where = "neither a folder nor a Series Instance UID in the cache" if lookup else "no such folder or file"
        raise FileNotFoundError(f"no files for {target} ({where})")
    return files


def load_volume(target: str | Path, lookup: CacheLookup | None = None) -> Volume:
    """A :class:`Volume` (slices, rows, columns; HU for CT) from a NIfTI CT file
    (:func:`volume_from_nifti`), or from :func:`series_files` through
    :func:`dicom_ai.infer.volume.load_series`.

    Raises
    ------
    FileNotFoundError
        As :func:`series_files`.
    dicom_ai.infer.volume.VolumeError
        If the files do not make one regular volume.
    """
    if is_nifti(target) and Path(target).is_file():
        return volume_from_nifti(Path(target))
    return load_series(series_files(target, lookup))


def volume_from_nifti(path: Path) -> Volume:
    """A :class:`Volume` from a NIfTI CT (RAS affine), for evaluation on NIfTI test data.

    The NIfTI voxel axes (i, j, k) become (columns, rows, slices); the affine columns are
    converted from RAS to LPS. ``datasets`` and ``paths`` stay empty.
    """
    import nibabel as nib
    import numpy as np

    img = cast("nib.Nifti1Image", nib.load(str(path)))  # NIfTI-2 images subclass it
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

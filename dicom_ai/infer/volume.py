"""Series to volume in patient space.

STUB: interface fixed, implementation in progress (see the helper's task).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom


class VolumeError(ValueError):
    """The series cannot be turned into a volume; the message is for the admin."""


@dataclass
class Volume:
    """A CT/MR series as a 3D array in patient space.

    Attributes
    ----------
    array:
        float32, shape (slices, rows, columns); CT in HU (Rescale Slope/Intercept applied).
    spacing:
        (slice, row, column) spacing in mm: slice = distance between slice centres along the
        normal, row = Pixel Spacing[0] (between rows), column = Pixel Spacing[1].
    origin:
        (3,) Image Position (Patient) of the first slice, mm, DICOM patient coordinates (LPS).
    direction:
        (3, 3) rows are unit vectors in patient coordinates: [0] row direction (IOP[0:3], along
        columns index), [1] column direction (IOP[3:6], along rows index), [2] slice normal in the
        order the slices are stored (increasing slice index).
    datasets:
        One header per slice, in slice order, read without pixel data.
    paths:
        The file of each slice, in slice order.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    datasets: list[pydicom.Dataset] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def index_to_patient(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) voxel indices (slice, row, column) to (N, 3) patient coordinates in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        k, r, c = ijk[:, 0], ijk[:, 1], ijk[:, 2]
        return (
            self.origin[None, :]
            + c[:, None] * self.spacing[2] * self.direction[0][None, :]
            + r[:, None] * self.spacing[1] * self.direction[1][None, :]
            + k[:, None] * self.spacing[0] * self.direction[2][None, :]
        )

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0


def load_series(paths: list[Path]) -> Volume:
    """Read the files of one series and assemble a :class:`Volume`. Raises :class:`VolumeError`."""
    raise NotImplementedError

"""The image plane of a slice (PS3.3 C.7.6.2.1.1, Image Plane Module).

Image Orientation (Patient) (0020,0037) gives two direction cosines in the patient coordinate
system (LPS: +x to the patient's left, +y posterior, +z superior, mm): the row direction (along
a row, increasing column index) and the column direction (down a column, increasing row index).
Their cross product is the slice normal, along which slices are ordered by the projection of
Image Position (Patient) (0020,0032).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Smallest norm of row direction x column direction that still gives a slice normal.
DEGENERATE_NORM = 1e-6

#: Label of the patient axis (x, y, z) the slice normal is closest to.
_AXIS_LABELS = ("SAGITTAL", "CORONAL", "AXIAL")


def plane_axes(cosines: Sequence[float] | np.ndarray) -> np.ndarray | None:
    """Orthonormal axes of the image plane.

    Parameters
    ----------
    cosines:
        The 6 values of Image Orientation (Patient) (0020,0037): row direction (3), then column
        direction (3), in patient coordinates (LPS).

    Returns
    -------
    numpy.ndarray or None
        float64, shape (3, 3); rows are unit vectors in patient coordinates: [0] the row
        direction, [1] the column direction made orthogonal to it (Gram-Schmidt), [2] the slice
        normal ``row x column``. None when the two directions are (nearly) parallel or zero
        (``|row x column|`` below :data:`DEGENERATE_NORM`).
    """
    r = np.asarray(cosines[:3], dtype=np.float64)
    c = np.asarray(cosines[3:6], dtype=np.float64)
    if np.linalg.norm(np.cross(r, c)) < DEGENERATE_NORM:
        return None
    r = r / np.linalg.norm(r)
    c = c - (c @ r) * r
    c = c / np.linalg.norm(c)
    return np.stack([r, c, np.cross(r, c)])


def slice_normal(cosines: Sequence[float]) -> np.ndarray | None:
    """Unit slice normal, row direction x column direction, of Image Orientation (Patient).

    Parameters
    ----------
    cosines:
        The 6 direction cosines (row, then column direction; LPS).

    Returns
    -------
    numpy.ndarray or None
        float64, shape (3,), in patient coordinates; None for degenerate cosines
        (:func:`plane_axes`).
    """
    axes = plane_axes(cosines)
    return None if axes is None else axes[2]


def orientation_label(normal: Sequence[float] | np.ndarray) -> str:
    """Anatomical orientation of a slice from its unit normal.

    Parameters
    ----------
    normal:
        Unit slice normal, shape (3,), patient coordinates (LPS).

    Returns
    -------
    str
        ``SAGITTAL``, ``CORONAL`` or ``AXIAL`` when the normal is within about 37 degrees of the
        x, y or z patient axis (largest absolute component >= 0.8), ``OBLIQUE`` otherwise.
    """
    axis = max(range(3), key=lambda i: abs(normal[i]))
    return _AXIS_LABELS[axis] if abs(normal[axis]) >= 0.8 else "OBLIQUE"

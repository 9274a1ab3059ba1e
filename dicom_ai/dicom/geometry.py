"""The image plane of a slice (PS3.3 C.7.6.2.1.1, Image Plane Module).

Image Orientation (Patient) (0020,0037) gives two direction cosines in the patient coordinate
system (LPS: +x to the patient's left, +y posterior, +z superior, mm): the row direction (along
a row, increasing column index) and the column direction (down a column, increasing row index).
Their cross product is the slice normal, along which slices are ordered by the projection of
Image Position (Patient) (0020,0032).
"""

from __future__ import annotations

import math
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
    # plain floats: for one slice this is ten times faster than numpy's small-array calls, and
    # the C-STORE handler calls it for every instance
    r = [float(v) for v in cosines[:3]]
    c = [float(v) for v in cosines[3:6]]
    if _norm(_cross(r, c)) < DEGENERATE_NORM:
        return None
    length = _norm(r)
    r = [v / length for v in r]
    along = c[0] * r[0] + c[1] * r[1] + c[2] * r[2]
    c = [cv - along * rv for cv, rv in zip(c, r, strict=True)]
    length = _norm(c)
    c = [v / length for v in c]
    return np.array([r, c, _cross(r, c)], dtype=np.float64)


def _cross(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _norm(a: Sequence[float]) -> float:
    return math.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2])


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

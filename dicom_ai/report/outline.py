"""The outline of a segment on one slice, as SR spatial coordinates (PS3.3 C.18.6 Spatial
Coordinates Macro): a closed POLYLINE in image pixel coordinates, column then row, where
(0.0, 0.0) is the top left corner of the top left pixel (PS3.3 C.18.6.1.2).

The outline follows the pixel edges of the largest 4-connected region of the segment on the
slice: every point is a pixel corner, and the polygon encloses exactly that region's pixels
(holes are not outlined). Points where the outline runs straight on are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SliceOutline:
    """The largest cross-section of a segment.

    Attributes
    ----------
    slice_index:
        Index of the slice in the volume (slices, rows, columns).
    points:
        float (n, 2) closed polygon (the last point repeats the first), (column, row) pixel
        coordinates.
    region:
        bool (rows, columns) mask of the outlined region on that slice.
    """

    slice_index: int
    points: np.ndarray
    region: np.ndarray


#: Edges of a pixel (row, column) whose neighbour across that side is outside the region,
#: as corner (row, column) offsets start -> end, clockwise on screen (rows grow downwards).
_SIDES = (
    ((-1, 0), (0, 0), (0, 1)),  # top: neighbour above; left to right
    ((0, 1), (0, 1), (1, 1)),  # right: top to bottom
    ((1, 0), (1, 1), (1, 0)),  # bottom: right to left
    ((0, -1), (1, 0), (0, 0)),  # left: bottom to top
)


def _loops(region: np.ndarray) -> list[list[tuple[int, int]]]:
    """The closed boundary loops of a bool (rows, columns) region, as corner (row, column)
    lists (first point not repeated). Where two loops touch at a corner the walk turns right,
    so each loop bounds a 4-connected set."""
    padded = np.pad(region, 1)
    nxt: dict[tuple[int, int], list[tuple[int, int]]] = {}
    inside = padded[1:-1, 1:-1]
    for (dr, dc), (sr, sc), (er, ec) in _SIDES:
        rows, cols = np.nonzero(inside & ~padded[1 + dr:padded.shape[0] - 1 + dr, 1 + dc:padded.shape[1] - 1 + dc])
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            nxt.setdefault((r + sr, c + sc), []).append((r + er, c + ec))
    loops = []
    while nxt:
        start = next(iter(nxt))
        loop: list[tuple[int, int]] = []
        here, heading = start, (0, 0)
        while True:
            loop.append(here)
            outs = nxt[here]
            right = (heading[1], -heading[0])  # a right turn on screen (rows grow downwards)
            step = next((o for o in outs if (o[0] - here[0], o[1] - here[1]) == right), outs[0])
            outs.remove(step)
            if not outs:
                del nxt[here]
            heading = (step[0] - here[0], step[1] - here[1])
            here = step
            if here == start:
                break
        loops.append(loop)
    return loops


def _corners_only(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Drop the points where the loop goes straight on."""
    n = len(loop)
    keep = []
    for i, p in enumerate(loop):
        a, b = loop[i - 1], loop[(i + 1) % n]
        if (p[0] - a[0], p[1] - a[1]) != (b[0] - p[0], b[1] - p[1]):
            keep.append(p)
    return keep


def largest_part(region: np.ndarray) -> np.ndarray:
    """The largest 4-connected part of a bool (rows, columns) region (the region itself when it
    is in one piece); empty when the region is."""
    labels, n = ndimage.label(region)
    if n <= 1:
        return labels == 1
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def region_outline(region: np.ndarray) -> np.ndarray:
    """Outer outline of a 4-connected bool (rows, columns) region (:func:`largest_part`).

    Returns
    -------
    numpy.ndarray
        float (n, 2) closed polygon of (column, row) pixel-corner coordinates; the last point
        repeats the first.

    Raises
    ------
    ValueError
        If the region is empty.
    """
    if not region.any():
        raise ValueError("empty region: nothing to outline")

    def area(loop: list[tuple[int, int]]) -> float:
        y = np.array([p[0] for p in loop], dtype=float)
        x = np.array([p[1] for p in loop], dtype=float)
        return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))

    outer = max(_loops(region), key=lambda loop: abs(area(loop)))  # holes are smaller loops
    corners = _corners_only(outer)
    return np.array([(c, r) for r, c in corners] + [(corners[0][1], corners[0][0])], dtype=float)


def largest_cross_section(mask: np.ndarray, value: int) -> SliceOutline | None:
    """The outline of label ``value`` on the slice where it covers the most pixels.

    Parameters
    ----------
    mask:
        uint8 label mask (slices, rows, columns).
    value:
        The label value.

    Returns
    -------
    SliceOutline | None
        None when the label is empty. The region is the largest 4-connected part of the label
        on that slice, the one the outline encloses.
    """
    counts = (mask == value).reshape(mask.shape[0], -1).sum(axis=1)
    if not counts.any():
        return None
    k = int(np.argmax(counts))
    region = largest_part(mask[k] == value)
    return SliceOutline(slice_index=k, points=region_outline(region), region=region)

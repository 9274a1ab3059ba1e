"""Post-processing of a segmentation mask on the source grid: the largest connected component
of each label, and the filling of small holes (vessels and nodules inside an organ).

Both work in place on a uint8 label mask (slices, rows, columns) holding manifest label values.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def label_boxes(mask: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every label value present in a uint8 mask, in one pass."""
    return {i + 1: box for i, box in enumerate(ndi.find_objects(mask)) if box is not None}


def _regions(mask: np.ndarray, labels: list[int]):
    """(value, bounding box, view of ``mask`` on it) for each label value present."""
    boxes = label_boxes(mask)
    for value in labels:
        box = boxes.get(value)
        if box is not None:
            yield value, box, mask[box]


def keep_largest_component(mask: np.ndarray, labels: list[int]) -> np.ndarray:
    """Keep, for each label value, only its largest 3D connected component (26-connectivity).

    Parameters
    ----------
    mask:
        uint8 label mask (slices, rows, columns); modified in place and returned.
    labels:
        Label values to process.

    Returns
    -------
    np.ndarray
        The same array.
    """
    struct = ndi.generate_binary_structure(3, 3)
    for value, _, sub in _regions(mask, labels):
        comp, n = ndi.label(sub == value, structure=struct)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        sub[(comp != 0) & (comp != int(np.argmax(sizes)))] = 0
    return mask


def fill_small_holes(mask: np.ndarray, labels: list[int], spacing: tuple[float, float, float],
                     max_mm2: float, image: np.ndarray | None = None,
                     below: float | None = None) -> np.ndarray:
    """Fill, per label and axial slice, background holes enclosed by the label of at most
    ``max_mm2`` (vessel cross-sections, small nodules), holes of any size whose mean ``image``
    value is below ``below`` (for the lung: aerated lung enclosed by lung), and holes enclosed
    in 3D; other in-slice holes stay open (for the lung: the diaphragm domes seen from above,
    soft tissue). Voxels of another label are never changed.

    Parameters
    ----------
    mask:
        uint8 label mask (slices, rows, columns); modified in place and returned.
    spacing:
        (slice, row, column) spacing in mm; rows x columns gives the pixel area.
    max_mm2:
        Largest in-slice hole filled whatever its content, mm^2.
    image, below:
        The source image (slices, rows, columns; HU for CT) and the mean value under which a
        hole of any size is filled; both or neither.
    """
    max_px = max_mm2 / (float(spacing[1]) * float(spacing[2]))
    for value, box, sub in _regions(mask, labels):
        m = sub == value
        filled = ndi.binary_fill_holes(m)
        for z in range(m.shape[0]):
            if not m[z].any():
                continue
            holes = ndi.binary_fill_holes(m[z]) & ~m[z]
            lab, n = ndi.label(holes)
            if n:
                index = np.arange(1, n + 1)
                keep = ndi.sum(holes, lab, index=index) <= max_px
                if image is not None and below is not None:
                    keep |= ndi.mean(image[box][z], lab, index=index) < below
                filled[z] |= np.isin(lab, index[keep])
        sub[filled & (sub == 0)] = value
    return mask

"""Post-processing of a segmentation mask on the source grid: class indices to the manifest's
label values, the largest connected component of each label, and the filling of small holes
(vessels and nodules inside an organ).

All work in place on a uint8 label mask (slices, rows, columns); :func:`postprocess_segmentation`
runs them in that order, as :meth:`dicom_ai.infer.runtime.SegmentationModel.predict` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage as ndi

if TYPE_CHECKING:
    from dicom_ai.package.manifest import ModelManifest


def remap_labels(mask: np.ndarray, values: list[int]) -> np.ndarray:
    """Replace class indices by label values: index ``i`` becomes ``values[i]``.

    Parameters
    ----------
    mask:
        uint8 class-index mask (slices, rows, columns), from the argmax of the network's
        classes; modified in place and returned.
    values:
        Label value of each class index; ``values[0]`` is the background (0).

    Returns
    -------
    np.ndarray
        The same array, holding label values.
    """
    if values != list(range(len(values))):
        indices = mask.copy()
        for index, value in enumerate(values):
            mask[indices == index] = value
    return mask


def postprocess_segmentation(mask: np.ndarray, manifest: ModelManifest, spacing: tuple[float, float, float],
                             image: np.ndarray) -> np.ndarray:
    """All post-processing of a segmentation model's mask on the source grid: class indices to
    the manifest's label values (:func:`remap_labels`), the largest component of each label
    (:func:`keep_largest_component`), and with the manifest's ``fill_holes_mm2`` the filling of
    holes (:func:`fill_small_holes`, with ``fill_holes_below``).

    Parameters
    ----------
    mask:
        uint8 class-index mask (slices, rows, columns), 0 background, index ``i`` for the
        manifest's ``labels[i - 1]``; modified in place and returned.
    manifest:
        The model's manifest.
    spacing:
        (slice, row, column) spacing of the source grid, mm.
    image:
        The source image (slices, rows, columns; HU for CT).

    Returns
    -------
    np.ndarray
        The same array, holding the manifest's label values.
    """
    labels = [lab.value for lab in manifest.labels]
    remap_labels(mask, [0] + labels)
    keep_largest_component(mask, labels)
    if manifest.fill_holes_mm2:
        fill_small_holes(mask, labels, spacing, manifest.fill_holes_mm2, image, manifest.fill_holes_below)
    return mask


def nonzero_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of the non-zero voxels of a mask.

    Parameters
    ----------
    mask:
        Integer or boolean mask (slices, rows, columns).

    Returns
    -------
    tuple[slice, slice, slice] | None
        (slices, rows, columns) ranges of the smallest box holding every non-zero voxel; None
        when the mask is all zero. Found by maximum reductions, one pass over the mask and one
        over the slices it spans.
    """
    if mask.size == 0:
        return None
    flat = np.ascontiguousarray(mask).reshape(mask.shape[0], -1)
    slices = np.flatnonzero(flat.max(axis=1))
    if not slices.size:
        return None
    z = slice(int(slices[0]), int(slices[-1]) + 1)
    plane = mask[z].max(axis=0)
    rows = np.flatnonzero(plane.max(axis=1))
    columns = np.flatnonzero(plane.max(axis=0))
    return z, slice(int(rows[0]), int(rows[-1]) + 1), slice(int(columns[0]), int(columns[-1]) + 1)


def label_boxes(mask: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box (slices, rows, columns) of every label value present in a uint8 mask
    (``scipy.ndimage.find_objects`` within the box of the non-zero voxels)."""
    outer = nonzero_box(mask)
    if outer is None:
        return {}
    offsets = [s.start for s in outer]
    return {
        i + 1: tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, offsets, strict=True))
        for i, box in enumerate(ndi.find_objects(mask[outer])) if box is not None
    }


def _regions(mask: np.ndarray, labels: list[int]):
    """(value, bounding box, view of ``mask`` on it, ``view == value``) for each label value
    present; each box is found within the box of all non-zero voxels."""
    outer = nonzero_box(mask)
    if outer is None:
        return
    region = mask[outer]
    for value in labels:
        inside = region == value
        box = nonzero_box(inside)
        if box is not None:
            absolute = tuple(slice(s.start + o.start, s.stop + o.start) for s, o in zip(box, outer, strict=True))
            yield value, absolute, mask[absolute], inside[box]


def _each_region(regions: Iterable[tuple], work: Callable[[tuple], Any]) -> list[tuple[tuple, Any]]:
    """``(region, work(region))`` for each region of :func:`_regions`, in label order, computed
    in threads up to the usable CPUs: scipy.ndimage's labelling and morphology release the GIL
    for most of their work. ``work`` only reads the mask; its caller applies the results in
    order, so the outcome is that of a sequential loop."""
    regions = list(regions)
    workers = min(len(regions), len(os.sched_getaffinity(0)))
    if workers <= 1:
        return [(r, work(r)) for r in regions]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="postprocess") as pool:
        return list(zip(regions, pool.map(work, regions), strict=True))


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

    def smaller_components(region: tuple) -> np.ndarray | None:
        inside = region[3]
        comp, n = ndi.label(inside, structure=struct)
        if n <= 1:
            return None
        # component sizes from the label's voxels only (component 0, the rest, is not counted)
        sizes = np.bincount(comp[inside], minlength=n + 1)
        return inside & (comp != int(np.argmax(sizes)))

    # each label's voxels are its own: removing one label's components changes no other region
    for (_, _, sub, _), drop in _each_region(_regions(mask, labels), smaller_components):
        if drop is not None:
            sub[drop] = 0
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
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)  # 4-connected within a slice, as binary_fill_holes

    def holes_filled(region: tuple) -> np.ndarray:
        _, box, _, m = region
        filled = ndi.binary_fill_holes(m)
        # in-slice holes: the 4-connected background components of a slice that do not touch
        # its border, i.e. what binary_fill_holes(m[z]) adds; all slices labelled at once
        background, n = ndi.label(~m, structure=in_plane)
        if n:
            exterior = np.zeros(n + 1, dtype=bool)
            exterior[0] = True  # 0: the label's own voxels
            for edge in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
                exterior[edge] = True
            index = np.flatnonzero(~exterior)
            if index.size:
                keep = np.bincount(background.ravel(), minlength=n + 1)[index] <= max_px
                if image is not None and below is not None:
                    keep |= np.asarray(ndi.mean(image[box], background, index=index)) < below
                chosen = np.zeros(n + 1, dtype=bool)
                chosen[index[keep]] = True
                filled |= chosen[background]
        return filled

    # filling writes only background voxels, which no region reads as its own: computed apart, applied
    # in label order (a voxel two labels enclose goes to the first), as a sequential loop does
    for (value, _, sub, _), filled in _each_region(_regions(mask, labels), holes_filled):
        sub[filled & (sub == 0)] = value
    return mask

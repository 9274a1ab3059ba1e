"""Post-processing of a segmentation mask on the source grid: class indices to the manifest's
label values, the largest connected component of each label, and the filling of small holes
(vessels and nodules inside an organ).

All work in place on a uint8 label mask (slices, rows, columns); :func:`postprocess_segmentation`
runs them in that order, as :meth:`dicom_ai.infer.runtime.SegmentationModel.predict` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
    boxes = _keep_largest(mask, labels)
    if manifest.fill_holes_mm2:
        _fill_holes(mask, labels, boxes, spacing, manifest.fill_holes_mm2, image, manifest.fill_holes_below)
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


#: Edge of the blocks (slices, rows, columns) in which :func:`keep_largest_component` first
#: looks for the components of a label, voxels.
BLOCK = (4, 4, 4)

_STRUCT_26 = ndi.generate_binary_structure(3, 3)


def _block_any(inside: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    """Whether each block of ``block`` voxels of a boolean (slices, rows, columns) array holds a
    True voxel (blocks start at index 0; the last block of an axis may be shorter)."""
    for axis, size in enumerate(block):
        if size <= 1 or inside.shape[axis] <= 1:
            continue
        index: list[slice] = [slice(None)] * 3
        index[axis] = slice(0, None, size)
        out = inside[tuple(index)].copy()
        for k in range(1, size):
            index[axis] = slice(k, None, size)
            part = inside[tuple(index)]
            target: list[slice] = [slice(None)] * 3
            target[axis] = slice(0, part.shape[axis])
            out[tuple(target)] |= part
        inside = out
    return inside


def _fine_box(blocks: tuple[slice, ...], block: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The voxels (slices, rows, columns) of a box of blocks, within an array of ``shape``."""
    return tuple(slice(s.start * b, min(s.stop * b, n)) for s, b, n in zip(blocks, block, shape, strict=True))


def _largest_component(region: np.ndarray, value: int, inside: np.ndarray) -> tuple[slice, ...] | None:
    """Keep in ``region`` (a view of the mask) only the largest 26-connected component of the
    voxels ``inside`` (``region == value``); returns its box within ``region``.

    Exact, with the fine labelling limited to one box: the blocks (:data:`BLOCK`) holding a
    voxel of the label are labelled first (26-connected). Two voxels that touch lie in blocks
    that touch, so every component of the label lies in one component of blocks. Only the box
    of the component of most blocks is labelled voxel by voxel; when its largest component is
    unique and larger than any other component of blocks could hold (blocks x voxels per
    block), it is the label's largest component. Otherwise (a tie, or two large components of
    blocks) the whole box of the label is labelled.
    """
    occupied = _block_any(inside, BLOCK)
    coarse, m = ndi.label(occupied, structure=_STRUCT_26)
    if m == 0:
        return None
    blocks = np.bincount(coarse.ravel(), minlength=m + 1)
    blocks[0] = 0
    main = int(np.argmax(blocks))
    objects = ndi.find_objects(coarse)
    fine = _fine_box(objects[main - 1], BLOCK, region.shape)
    comp, n = ndi.label(inside[fine], structure=_STRUCT_26)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    sizes[0] = 0
    best = int(np.argmax(sizes))
    others = np.delete(blocks, main)
    bound = int(others.max()) * int(np.prod(BLOCK)) if others.size else 0
    if int(np.count_nonzero(sizes == sizes[best])) > 1 or bound >= int(sizes[best]):
        # no unique winner from the main component of blocks: the whole box of the label
        box = nonzero_box(inside)
        if box is None:
            return None
        comp, n = ndi.label(inside[box], structure=_STRUCT_26)
        if n > 1:
            sizes = np.bincount(comp[inside[box]], minlength=n + 1)
            best = int(np.argmax(sizes))
            view = region[box]
            view[inside[box] & (comp != best)] = 0
            return _offset(nonzero_box(comp == best), box)
        return box
    if n > 1:
        drop = np.ones(n + 1, dtype=bool)
        drop[0] = drop[best] = False
        view = region[fine]
        view[drop[comp]] = 0
    # the label's voxels in the other components of blocks
    for i, blocks_box in enumerate(objects, start=1):
        if i == main or blocks_box is None:
            continue
        where = _fine_box(blocks_box, BLOCK, region.shape)
        own = coarse[blocks_box] == i
        for axis, size in enumerate(BLOCK):
            own = np.repeat(own, size, axis=axis)
        own = own[tuple(slice(0, s.stop - s.start) for s in where)] & inside[where]
        region[where][own] = 0
    return _offset(nonzero_box(comp == best) if n > 1 else nonzero_box(comp), fine)


def _offset(box: tuple[slice, ...] | None, within: tuple[slice, ...]) -> tuple[slice, ...] | None:
    """``box``, given within the box ``within``, in the coordinates ``within`` is given in."""
    if box is None:
        return None
    return tuple(slice(s.start + o.start, s.stop + o.start) for s, o in zip(box, within, strict=True))


def _keep_largest(mask: np.ndarray, labels: list[int]) -> dict[int, tuple[slice, ...]]:
    """:func:`keep_largest_component`; returns the bounding box of each label value left."""
    outer = nonzero_box(mask)
    if outer is None:
        return {}
    region = mask[outer]
    boxes = {}
    # each label's voxels are its own: removing one label's components changes no other label
    for value in labels:
        box = _largest_component(region, value, region == value)
        if box is not None:
            boxes[value] = _offset(box, outer)
    return boxes  # type: ignore[return-value]


def keep_largest_component(mask: np.ndarray, labels: list[int]) -> np.ndarray:
    """Keep, for each label value, only its largest 3D connected component (26-connectivity;
    of components of equal size, the first in (slices, rows, columns) order of the label's box).

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
    _keep_largest(mask, labels)
    return mask


def fill_small_holes(mask: np.ndarray, labels: list[int], spacing: tuple[float, float, float],
                     max_mm2: float, image: np.ndarray | None = None,
                     below: float | None = None) -> np.ndarray:
    """Fill, per label and axial slice, background holes enclosed by the label of at most
    ``max_mm2`` (vessel cross-sections, small nodules), holes of any size whose mean ``image``
    value is below ``below`` (for the lung: aerated lung enclosed by lung), and holes enclosed
    in 3D; other in-slice holes stay open (for the lung: the diaphragm domes seen from above,
    soft tissue). Voxels of another label are never changed; a voxel two labels enclose goes to
    the first in ``labels``. Each label is processed within its bounding box: a background
    region touching the box's sides is no hole.

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
    boxes = {value: box for value, box, _, _ in _regions(mask, labels)}
    _fill_holes(mask, labels, boxes, spacing, max_mm2, image, below)
    return mask


def _fill_holes(mask: np.ndarray, labels: list[int], boxes: dict[int, tuple[slice, ...]],
                spacing: tuple[float, float, float], max_mm2: float, image: np.ndarray | None,
                below: float | None) -> None:
    """:func:`fill_small_holes` with each label's bounding box given (``boxes``)."""
    max_px = max_mm2 / (float(spacing[1]) * float(spacing[2]))
    # filling one label writes only background voxels, which are background to every other label
    # too: the labels one after the other give what each computed on the unfilled mask would
    for value in labels:
        if value in boxes:
            box = boxes[value]
            _fill_label(mask[box], value, max_px, image[box] if image is not None else None, below)


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndi.generate_binary_structure(2, 1)  # 4-connected within a slice, as binary_fill_holes


def _fill_label(sub: np.ndarray, value: int, max_px: float, image: np.ndarray | None,
                below: float | None) -> None:
    """Fill the holes of label ``value`` in ``sub``, its bounding box (a view of the mask).

    The in-slice holes are the 4-connected background components of a slice that do not touch
    its sides (what ``binary_fill_holes`` of the slice adds), all slices labelled at once. The
    holes enclosed in 3D (what ``binary_fill_holes`` of the box adds: background not
    6-connected to a face of the box) are the unions of in-slice holes that overlap from slice
    to slice and reach neither a first or last slice of the box nor a background region that
    touches the sides of its slice.
    """
    m = sub == value
    background, n = ndi.label(~m, structure=_IN_PLANE)
    if not n:
        return
    open_ = np.zeros(n + 1, dtype=bool)
    open_[0] = True  # 0: the label's own voxels
    for edge in (background[:, 0, :], background[:, -1, :], background[:, :, 0], background[:, :, -1]):
        open_[edge] = True
    if open_.all():
        return
    flat = background.ravel()
    where = np.flatnonzero(~open_[flat])  # the voxels of the in-slice holes, in order
    hole = flat[where]
    counts = np.bincount(hole, minlength=n + 1)
    chosen = ~open_ & (counts <= max_px)
    plane = background.shape[1] * background.shape[2]
    z, rest = np.divmod(where, plane)
    if image is not None and below is not None:
        y, x = np.divmod(rest, background.shape[2])
        sums = np.bincount(hole, weights=image[z, y, x].astype(np.float64), minlength=n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            chosen |= ~open_ & (sums / counts < below)
    # holes enclosed in 3D: components of the graph of holes and the regions they overlap in the
    # next and previous slices; a component is open when it holds an open region or a region of
    # the first or last slice
    ends = open_.copy()
    ends[background[0]] = True
    ends[background[-1]] = True
    pairs = []
    for step, ok in ((plane, z < background.shape[0] - 1), (-plane, z > 0)):
        other = flat[where[ok] + step]
        touch = other != 0
        pairs.append((hole[ok][touch], other[touch]))
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n + 1, n + 1))
    _, group = connected_components(graph, directed=False)
    open_group = np.bincount(group, weights=ends, minlength=int(group.max()) + 1) > 0
    chosen |= ~open_ & ~open_group[group]
    chosen[0] = False
    fill = where[chosen[hole]]
    if fill.size:
        z, rest = np.divmod(fill, plane)
        y, x = np.divmod(rest, background.shape[2])
        keep = sub[z, y, x] == 0
        sub[z[keep], y[keep], x[keep]] = value

"""Training labels for the lung model: TotalSegmentator lobes, or a classical HU extraction.

Label values: 0 background, 1 left lung, 2 right lung (patient left = +x in DICOM LPS).

Two sources, used in this order of preference:

* :func:`labels_from_totalsegmentator` - a TotalSegmentator v2 label map (NIfTI, RAS) sampled
  onto a DICOM volume by :func:`dicom_ai.evaluate.reference.sample_label_map`; lobes 10 (upper left) and
  11 (lower left) become left lung, 12, 13, 14 (upper, middle, lower right) become right lung.
* :func:`classical_lung_labels` - a documented threshold pipeline on the canonical grid:

  1. air mask: HU < -320;
  2. air connected (3D) to the in-plane border of the image is outside the body - removed;
  3. the trachea is found as a small, round, central air region in the upper slices and grown
     (3D, HU below a threshold raised step by step from -980 HU while the airway volume stays
     plausible) into the trachea and main bronchi, which are removed (dilated by one voxel);
  4. remaining air components of at least ``min_ml`` (default 30 mL) and 10 % of the largest
     one (bowel gas under the diaphragm is smaller) whose mean HU is that of
     aerated lung (-950 to -500 HU; bowel gas is darker, near -1000) are lung;
     if left and right lung touch (one component), it is eroded until it splits into two,
     and the parts grow back inside the mask (nearest seed);
  5. components are assigned to left or right by their centroid against the body midline;
  6. holes enclosed in 3D are filled (nodules), and in-slice holes up to ``max_hole_mm2``
     (400 mm^2; vessels) - larger in-slice holes are the diaphragm domes and stay open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from dicom_ai.evaluate.reference import sample_label_map
from dicom_ai.infer.volume import Volume

LEFT, RIGHT = 1, 2
#: Largest in-slice hole (mm^2) the classical extraction fills: vessels and small nodules are
#: lung; the diaphragm domes, seen from above as larger holes, are not.
CLASSICAL_MAX_HOLE_MM2 = 400.0
#: An air component is lung when its mean is between -950 HU (darker: bowel gas) and this.
CLASSICAL_AERATED_MAX_HU = -500.0
#: TotalSegmentator v2 class numbers of the lung lobes (label map ``total`` task, 117 classes).
TOTALSEG_LEFT_LOBES = (10, 11)  # lung_upper_lobe_left, lung_lower_lobe_left
TOTALSEG_RIGHT_LOBES = (12, 13, 14)  # lung_upper/middle/lower_lobe_right


def labels_from_totalsegmentator(volume: Volume, nifti_path: Path) -> np.ndarray:
    """Left/right lung labels from a TotalSegmentator v2 label map on ``volume``'s grid.

    Lobes 10, 11 -> 1 (left lung); 12, 13, 14 -> 2 (right lung); see :func:`sample_label_map`
    for the RAS to LPS mapping.

    Returns
    -------
    np.ndarray
        uint8 (slices, rows, columns): 0 background, 1 left lung, 2 right lung.
    """
    lab = sample_label_map(volume, nifti_path)
    out = np.zeros(lab.shape, dtype=np.uint8)
    out[np.isin(lab, TOTALSEG_LEFT_LOBES)] = LEFT
    out[np.isin(lab, TOTALSEG_RIGHT_LOBES)] = RIGHT
    return out


def _border_components(labels: np.ndarray) -> np.ndarray:
    """Label ids touching the in-plane border (rows/columns edges) of a (z, y, x) label array."""
    ids = np.concatenate(
        [labels[:, 0, :].ravel(), labels[:, -1, :].ravel(), labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]
    )
    ids = np.unique(ids)
    return ids[ids != 0]


def _find_trachea_seed(air: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], body_cx: float) -> np.ndarray | None:
    """Seed mask of the trachea: in the upper slices, a small round dark 2D region near the midline."""
    area_mm2 = spacing[1] * spacing[2]
    Z = air.shape[0]
    # search from the top (superior = high z index) down through the upper half
    for z in range(Z - 1, int(Z * 0.5), -1):
        lab, n = ndi.label(air[z])
        if n == 0:
            continue
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            comp = lab[sl] == i
            area = comp.sum() * area_mm2
            if not (80 <= area <= 700):
                continue
            cy, cx = ndi.center_of_mass(comp)
            cx += sl[1].start
            if abs((cx - body_cx) * spacing[2]) > 30:
                continue
            h = (sl[0].stop - sl[0].start) * spacing[1]
            w = (sl[1].stop - sl[1].start) * spacing[2]
            if max(h, w) > 2.2 * min(h, w):
                continue
            if hu[z][lab == i].mean() > -800:
                continue
            seed = np.zeros_like(air)
            seed[z][lab == i] = True
            return seed
    return None


def _grow_airway(hu: np.ndarray, seed: np.ndarray, spacing: tuple[float, float, float], candidate: np.ndarray) -> np.ndarray:
    """Trachea and main bronchi: 3D region of HU below a threshold connected to ``seed``.

    The threshold is raised from -980 HU in 20 HU steps; growth stops before the region more
    than doubles in one step or exceeds 250 mL (leak into the lung parenchyma).
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    best = seed.copy()
    prev_ml = None
    for thr in range(-980, -780, 20):
        mask = (hu < thr) & candidate
        lab, _ = ndi.label(mask)
        ids = np.unique(lab[seed & mask])
        ids = ids[ids != 0]
        if ids.size == 0:
            continue
        region = np.isin(lab, ids)
        ml = region.sum() * voxel_ml
        if ml > 250 or (prev_ml is not None and ml > 2.0 * prev_ml and ml > 30):
            break
        best, prev_ml = region, ml
    return best


def _split_two(mask: np.ndarray, min_vox: int) -> list[np.ndarray] | None:
    """Erode ``mask`` until it falls into two large parts; grow them back inside the mask."""
    eroded = mask.copy()
    struct = ndi.generate_binary_structure(3, 1)
    for _ in range(12):
        eroded = ndi.binary_erosion(eroded, struct)
        lab, n = ndi.label(eroded)
        if n < 2:
            continue
        sizes = ndi.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] < max(min_vox // 4, 0.1 * sizes[order[0]]):
            continue
        seeds = np.zeros(mask.shape, dtype=np.int32)
        seeds[lab == order[0] + 1] = 1
        seeds[lab == order[1] + 1] = 2
        # every mask voxel takes the label of the nearest seed voxel
        _, idx = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[tuple(idx)]
        return [(nearest == 1) & mask, (nearest == 2) & mask]
    return None


def classical_lung_labels(
    hu: np.ndarray, spacing: tuple[float, float, float], min_ml: float = 30.0,
    max_hole_mm2: float = CLASSICAL_MAX_HOLE_MM2
) -> np.ndarray:
    """Left/right lung labels by HU thresholding on a canonical (z, y, x) CT volume.

    See the module docstring for the steps.

    Parameters
    ----------
    hu:
        float32 (z, y, x) in HU on the canonical grid (z -> Superior, y -> Posterior,
        x -> patient Left), as made by :func:`dicom_ai.infer.preprocess.preprocess_volume`
        without the window.
    spacing:
        (z, y, x) voxel spacing in mm.
    min_ml:
        Smallest air component kept as lung, mL (also at least 10 % of the largest).
    max_hole_mm2:
        Largest in-slice hole filled, mm^2 (vessels and small nodules; the diaphragm domes
        are larger).

    Returns
    -------
    np.ndarray
        uint8 (z, y, x): 0 background, 1 left lung, 2 right lung.
    """
    voxel_ml = float(np.prod(spacing)) / 1000.0
    air = hu < -320
    lab, _ = ndi.label(air)
    outside = np.isin(lab, _border_components(lab))
    inside_air = air & ~outside
    body = ~outside
    body_cx = float(np.nonzero(body)[2].mean()) if body.any() else hu.shape[2] / 2

    seed = _find_trachea_seed(inside_air, hu, spacing, body_cx)
    if seed is not None:
        airway = _grow_airway(hu, seed, spacing, inside_air)
        airway = ndi.binary_dilation(airway, ndi.generate_binary_structure(3, 1)) & inside_air
        inside_air &= ~airway

    lab, n = ndi.label(inside_air)
    out = np.zeros(hu.shape, dtype=np.uint8)
    if n == 0:
        return out
    idx = np.arange(1, n + 1)
    sizes = ndi.sum(np.ones_like(lab), lab, index=idx)
    means = ndi.mean(hu, lab, index=idx)
    min_vox = int(min_ml / voxel_ml)
    big = [s for s, m in zip(sizes, means, strict=False) if -950 <= m <= CLASSICAL_AERATED_MAX_HU]
    floor = max(min_vox, 0.1 * max(big)) if big else min_vox
    keep = [i for i, s, m in zip(idx, sizes, means, strict=False) if s >= floor and -950 <= m <= CLASSICAL_AERATED_MAX_HU]
    parts: list[np.ndarray] = []
    for i in keep:
        comp = lab == i
        xs = np.nonzero(comp)[2]
        crosses = (xs.min() - body_cx) * (xs.max() - body_cx) < 0 and comp.sum() > 3 * min_vox
        if crosses:
            split = _split_two(comp, min_vox)
            if split is not None:
                parts.extend(split)
                continue
        parts.append(comp)
    for comp in parts:
        cx = float(np.nonzero(comp)[2].mean())
        out[comp] = LEFT if cx > body_cx else RIGHT
    # fill holes: enclosed in 3D (nodules), and small in-slice holes (vessel cross-sections);
    # large in-slice holes are left open - they are the diaphragm domes seen from above.
    max_hole = int(max_hole_mm2 / (spacing[1] * spacing[2]))
    for value in (LEFT, RIGHT):
        m = out == value
        m = ndi.binary_fill_holes(m)
        for z in range(m.shape[0]):
            if m[z].any():
                holes = ndi.binary_fill_holes(m[z]) & ~m[z]
                hl, hn = ndi.label(holes)
                if hn:
                    hs = ndi.sum(holes, hl, index=np.arange(1, hn + 1))
                    m[z] |= np.isin(hl, 1 + np.flatnonzero(hs <= max_hole))
        out[m & (out == 0)] = value
    return out

"""Torch preprocessing: canonical orientation, resampling to the model grid, intensity window.

The canonical grid of every model is axial in DICOM patient coordinates (LPS, PS3.3 C.7.6.2.1.1):
array axes (slices, rows, columns) run towards patient +z (Superior), +y (Posterior) and +x
(Left). A series is brought there by an axis permutation and flips chosen from its direction
cosines (no interpolation), then resampled to the model spacing with trilinear interpolation
(``torch.nn.functional.interpolate``) on the device. The same functions are used by training
(:mod:`dicom_ai.train`) and inference (:mod:`dicom_ai.infer.runtime`), so both see the same grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import CANONICAL_AXIS_OF

#: Patient axis (0 = x, 1 = y, 2 = z in LPS) held by each canonical array axis (slices, rows, columns).
CANONICAL_PATIENT_AXES = (2, 1, 0)


@dataclass(frozen=True)
class CanonicalTransform:
    """How to bring a (slices, rows, columns) source array to the canonical axial grid.

    Attributes
    ----------
    perm:
        For each canonical axis (slices -> +z, rows -> +y, columns -> +x), the source array axis
        that becomes it (``array.permute(perm)``).
    flip:
        Canonical axes to reverse after the permutation.
    source_shape:
        Shape of the source array, (slices, rows, columns).
    source_spacing:
        Spacing of the source array in mm, (slices, rows, columns).
    """

    perm: tuple[int, int, int]
    flip: tuple[int, ...]
    source_shape: tuple[int, int, int]
    source_spacing: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical shape (z, y, x) in voxels."""
        return tuple(self.source_shape[a] for a in self.perm)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Canonical spacing (z, y, x) in mm."""
        return tuple(float(self.source_spacing[a]) for a in self.perm)  # type: ignore[return-value]

    @property
    def inverse_perm(self) -> tuple[int, int, int]:
        """Permutation that undoes :attr:`perm`."""
        return tuple(int(i) for i in np.argsort(self.perm))  # type: ignore[return-value]


def canonical_transform(volume: Volume) -> CanonicalTransform:
    """Choose the axis permutation and flips that make ``volume`` canonical (axial, LPS).

    Each source axis is matched to the patient axis its direction cosine is closest to (the
    assignment maximising the summed absolute cosines over all six permutations, so oblique
    series get a consistent choice); an axis whose cosine points to the negative patient
    direction is flipped.

    Parameters
    ----------
    volume:
        The source volume; ``direction`` rows are (row direction, column direction, normal).

    Returns
    -------
    CanonicalTransform
    """
    # direction vector of each source array axis: slices -> normal, rows -> column direction
    # (IOP[3:6]), columns -> row direction (IOP[0:3])
    axis_dirs = np.stack([volume.direction[2], volume.direction[1], volume.direction[0]])
    best, best_score = None, -1.0
    for perm in itertools.permutations(range(3)):
        score = sum(abs(axis_dirs[perm[c], CANONICAL_PATIENT_AXES[c]]) for c in range(3))
        if score > best_score + 1e-9:
            best, best_score = perm, score
    assert best is not None
    flip = tuple(c for c in range(3) if axis_dirs[best[c], CANONICAL_PATIENT_AXES[c]] < 0)
    return CanonicalTransform(
        perm=tuple(int(a) for a in best),  # type: ignore[arg-type]
        flip=flip,
        source_shape=volume.shape,
        source_spacing=tuple(float(s) for s in volume.spacing),  # type: ignore[arg-type]
    )


def to_canonical(t: torch.Tensor, tf: CanonicalTransform) -> torch.Tensor:
    """Permute and flip the last three axes of ``t`` from source to canonical order.

    Parameters
    ----------
    t:
        Tensor of shape (..., slices, rows, columns) on the source grid.
    tf:
        From :func:`canonical_transform`.

    Returns
    -------
    torch.Tensor
        Shape (..., z, y, x).
    """
    lead = t.ndim - 3
    t = t.permute(*range(lead), *(lead + a for a in tf.perm))
    if tf.flip:
        t = torch.flip(t, dims=[lead + c for c in tf.flip])
    return t


def from_canonical(t: torch.Tensor, tf: CanonicalTransform) -> torch.Tensor:
    """Undo :func:`to_canonical`: (..., z, y, x) back to (..., slices, rows, columns)."""
    lead = t.ndim - 3
    if tf.flip:
        t = torch.flip(t, dims=[lead + c for c in tf.flip])
    return t.permute(*range(lead), *(lead + a for a in tf.inverse_perm))


def resampled_shape(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], target: tuple[float, float, float]
) -> tuple[int, int, int]:
    """Shape of the grid covering the same extent at ``target`` spacing (mm), at least 1 voxel."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=False))  # type: ignore[return-value]


def resample(t: torch.Tensor, size: tuple[int, int, int], mode: str = "trilinear") -> torch.Tensor:
    """Resample the last three axes of ``t`` to ``size`` with ``F.interpolate``.

    Parameters
    ----------
    t:
        (D, H, W), (C, D, H, W) or (N, C, D, H, W).
    size:
        Output (D, H, W) in voxels.
    mode:
        ``"trilinear"`` for intensities/probabilities, ``"nearest-exact"`` for labels.

    Returns
    -------
    torch.Tensor
        Same number of dimensions as ``t``; labels come back in their input dtype.
    """
    ndim = t.ndim
    x = t.reshape((1,) * (5 - ndim) + tuple(t.shape))
    dtype = x.dtype
    if not x.is_floating_point():
        x = x.float()
    if tuple(x.shape[-3:]) != tuple(size):
        kwargs = {"align_corners": False} if mode == "trilinear" else {}
        x = F.interpolate(x, size=tuple(size), mode=mode, **kwargs)
    x = x.to(dtype) if not dtype.is_floating_point else x
    return x.reshape(tuple(t.shape[:-3]) + tuple(size))


def apply_window(t: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Clip to ``window`` (low, high) in HU and scale linearly to [0, 1]."""
    low, high = float(window[0]), float(window[1])
    return (t.clamp(low, high) - low) / (high - low)


def apply_zscore(t: torch.Tensor) -> torch.Tensor:
    """Subtract the mean and divide by the standard deviation of the whole tensor (a constant
    tensor becomes zeros)."""
    std = t.std()
    return (t - t.mean()) / (std if float(std) > 0 else 1.0)


def preprocess_volume(
    volume: Volume,
    spacing: tuple[float, float, float],
    window: tuple[float, float] | None,
    device: torch.device | str = "cpu",
    normalization: str = "window",
) -> tuple[torch.Tensor, CanonicalTransform]:
    """Volume to the model input: canonical orientation, model spacing, normalised intensities.

    Parameters
    ----------
    volume:
        Source volume (HU for CT).
    spacing:
        Model spacing in mm, canonical (z, y, x) order.
    window:
        (low, high) in HU, for ``normalization = "window"``.
    device:
        Torch device for the work.
    normalization:
        ``"window"`` (clip to ``window``, scale to [0, 1]) or ``"zscore"`` (mean 0, SD 1 over
        the resampled volume).

    Returns
    -------
    image:
        float32 tensor (1, 1, z, y, x) on ``device``.
    transform:
        The canonical transform, needed to map results back.

    Raises
    ------
    ValueError
        If ``normalization`` is unknown, or is ``"window"`` without a window.
    """
    tf = canonical_transform(volume)
    t = torch.from_numpy(volume.array).to(device=device, dtype=torch.float32)
    t = to_canonical(t, tf)
    size = resampled_shape(tf.shape, tf.spacing, spacing)
    t = resample(t[None, None], size, mode="trilinear")
    if normalization == "window" and window is not None:
        t = apply_window(t, window)
    elif normalization == "zscore":
        t = apply_zscore(t)
    else:
        raise ValueError(f"normalization {normalization!r} (window {window}) is not supported")
    return t.contiguous(), tf


#: Orientation code of the canonical grid: axis 0 -> Superior, 1 -> Posterior, 2 -> Left.
CANONICAL_AXCODES = "SPL"


def network_axes(axcodes: str) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """How to go from the canonical grid (axcodes ``"SPL"``: slices, rows, columns) to a
    network's input axes given as orientation codes (MONAI ``Orientationd`` axcodes, e.g.
    ``"RAS"``: axis 0 towards patient Right, 1 Anterior, 2 Superior).

    Returns
    -------
    perm:
        ``perm[k]`` is the canonical axis that becomes network axis ``k``.
    flips:
        Whether network axis ``k`` runs opposite to that canonical axis.

    Raises
    ------
    ValueError
        If ``axcodes`` is not three letters naming each of S/I, P/A and L/R once.
    """
    codes = axcodes.upper()
    perm = tuple(CANONICAL_AXIS_OF.get(c, -1) for c in codes)
    if len(codes) != 3 or sorted(perm) != [0, 1, 2]:
        raise ValueError(f"axcodes {axcodes!r}: expected three letters, one of S/I, P/A and L/R each")
    flips = tuple(c != CANONICAL_AXCODES[j] for c, j in zip(codes, perm, strict=False))
    return perm, flips  # type: ignore[return-value]


def to_network_axes(t: torch.Tensor, axcodes: str) -> torch.Tensor:
    """(B, C, z, y, x) canonical -> (B, C, a0, a1, a2) in the network's ``axcodes``."""
    if axcodes.upper() == CANONICAL_AXCODES:
        return t
    perm, flips = network_axes(axcodes)
    t = t.permute(0, 1, *(2 + j for j in perm))
    dims = [2 + k for k, f in enumerate(flips) if f]
    return t.flip(dims) if dims else t


def from_network_axes(t: torch.Tensor, axcodes: str) -> torch.Tensor:
    """Inverse of :func:`to_network_axes`: (B|C, ..., a0, a1, a2) -> canonical (..., z, y, x);
    the last three dimensions are the spatial ones."""
    if axcodes.upper() == CANONICAL_AXCODES:
        return t
    perm, flips = network_axes(axcodes)
    lead = t.ndim - 3
    dims = [lead + k for k, f in enumerate(flips) if f]
    if dims:
        t = t.flip(dims)
    inverse = [perm.index(j) for j in range(3)]
    return t.permute(*range(lead), *(lead + k for k in inverse))


def canonical_order(values: tuple, axcodes: str) -> tuple:
    """Per-axis values (spacing, patch size) given in ``axcodes`` order, in canonical (z, y, x) order."""
    if axcodes.upper() == CANONICAL_AXCODES:
        return tuple(values)
    perm, _ = network_axes(axcodes)
    return tuple(values[perm.index(j)] for j in range(3))


def upsample_argmax(
    logits: torch.Tensor, size: tuple[int, int, int], slab: int = 16
) -> torch.Tensor:
    """Trilinear upsampling of class scores to ``size`` followed by argmax, one output slice at a
    time.

    Equivalent to ``F.interpolate(logits, size, mode="trilinear", align_corners=False)``
    followed by ``argmax`` over classes, done separably: each model slice is upsampled in-plane
    (bilinear) once, and each output slice is the linear blend of its two neighbouring model
    slices. Where both neighbours have the same argmax class, every blend of them has it too
    (a class that is largest at both ends of a linear path is largest all along it), so the
    blend is computed only for the pixels where they differ, the contours. Memory stays bounded
    by a few ``C x H x W`` planes whatever the number of slices.

    Parameters
    ----------
    logits:
        (C, d, h, w) class scores (float16/float32) on the model grid.
    size:
        Output (D, H, W) in voxels.
    slab:
        Kept for callers of the earlier slab-wise version; not used.

    Returns
    -------
    torch.Tensor
        uint8 labels (D, H, W) on the same device.
    """
    C, d, h, w = logits.shape
    D, H, W = size
    out = torch.empty((D, H, W), dtype=torch.uint8, device=logits.device)
    src = ((torch.arange(D, dtype=torch.float64) + 0.5) * (d / D) - 0.5).clamp(0, d - 1)
    lo_t = src.floor().long()
    frac = (src - lo_t.double()).tolist()
    lo: list[int] = lo_t.tolist()
    planes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def plane(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k not in planes:
            part = logits[:, k].float()
            if (h, w) != (H, W):
                part = F.interpolate(part[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            planes[k] = (part, _argmax_classes(part))
        return planes[k]

    for z in range(D):
        a = lo[z]
        b = min(a + 1, d - 1)
        for k in [k for k in planes if k < a]:
            del planes[k]
        scores_a, index_a = plane(a)
        f = frac[z]
        if b == a or f == 0.0:
            out[z] = index_a
            continue
        scores_b, index_b = plane(b)
        differ = index_a != index_b
        result = index_a.clone()
        if bool(differ.any()):
            result[differ] = _argmax_classes(scores_a[:, differ] * (1 - f) + scores_b[:, differ] * f)
        out[z] = result
    return out


def _argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    """Argmax over the first axis of (C, ...) as uint8, by elementwise comparisons (much faster
    on CPU than ``torch.argmax(dim=0)``, which reduces over a strided axis); ties keep the
    lowest index, as ``torch.argmax`` does."""
    best = scores[0].clone()
    index = torch.zeros(best.shape, dtype=torch.uint8, device=scores.device)
    for c in range(1, scores.shape[0]):
        better = scores[c] > best
        index[better] = c
        best = torch.maximum(best, scores[c])
    return index

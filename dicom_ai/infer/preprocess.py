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
    """Trilinear upsampling of class scores to ``size`` followed by argmax, computed only in the
    bounding box of the classes other than 0 (the background), on the device of ``logits``.

    Equivalent to ``F.interpolate(logits, size, mode="trilinear", align_corners=False)``
    followed by ``argmax`` over classes (ties to the lowest index), done separably: each model
    slice is upsampled in-plane once (bilinear: columns, then rows, with the source indices and
    weights of ``F.interpolate``, :func:`_linear_taps`), and each output slice is the linear
    blend of its two neighbouring model slices. Two rules keep the work small without changing
    any voxel:

    * every interpolated score is a blend of neighbouring model voxels with non-negative
      weights, so where class 0 wins (ties included) at all of them it wins in the blend too:
      outside the model-grid bounding box of the voxels whose argmax is not 0, widened by two
      model voxels, the output is 0 and is not computed;
    * where both neighbouring model slices have the same argmax class, every blend of them has
      it too, so the blend is computed only for the pixels where they differ (the contours).

    Only the box is upsampled in-plane. Its float32 products and sums are separate operations
    (the same on CPU and GPU); ``F.interpolate``'s kernel may fuse them, which can move a score
    by one unit in the last place and so change the argmax only where two classes tie to that
    precision (no voxel of the 275-slice LIDC-IDRI-0314 series with the shipped lung model).
    Memory stays bounded by ``slab`` upsampled model slices (fewer when ``C x H x W`` is large)
    whatever the number of slices.

    Parameters
    ----------
    logits:
        (C, d, h, w) class scores (float16/float32) on the model grid, axes (slices, rows,
        columns).
    size:
        Output (D, H, W) in voxels.
    slab:
        Most model slices upsampled in-plane at once (at least 2).

    Returns
    -------
    torch.Tensor
        uint8 labels (D, H, W) on the same device.
    """
    C, d, h, w = logits.shape
    D, H, W = size
    device = logits.device
    out = torch.zeros((D, H, W), dtype=torch.uint8, device=device)
    coarse = _argmax_classes(logits.float())
    box = _foreground_box(coarse != 0, (d, h, w), (D, H, W))
    if box is None:
        return out
    (z_start, z_stop), (y0, y1), (x0, x1) = box
    src = ((torch.arange(D, dtype=torch.float64) + 0.5) * (d / D) - 0.5).clamp(0, d - 1)
    lo_t = src.floor().long()
    frac_t = src - lo_t.double()
    hi_t = (lo_t + 1).clamp(max=d - 1)
    lo: list[int] = lo_t.tolist()
    hi: list[int] = hi_t.tolist()
    # the blend weights as the scalar products of a float32 tensor use them: float32(1 - f), float32(f)
    w_lo = (1.0 - frac_t).float().to(device)
    w_hi = frac_t.float().to(device)
    blend = ((hi_t != lo_t) & (frac_t != 0.0)).to(device)
    y_lo, y_hi, y_w0, y_w1 = _linear_taps(h, H, y0, y1, device)
    x_lo, x_hi, x_w0, x_w1 = _linear_taps(w, W, x0, x1, device)
    # the model rows and columns the box reads (the indices do not decrease)
    r0, r1 = int(y_lo[0]), int(y_hi[-1]) + 1
    c0, c1 = int(x_lo[0]), int(x_hi[-1]) + 1
    y_lo, y_hi, x_lo, x_hi = y_lo - r0, y_hi - r0, x_lo - c0, x_hi - c0
    plane_bytes = C * H * W * 4
    step = max(2, min(int(slab), (256 << 20) // max(plane_bytes, 1)))
    z = z_start
    while z < z_stop:
        k0 = lo[z]
        k1 = min(k0 + step, d)
        z_end = z
        while z_end < z_stop and hi[z_end] < k1:
            z_end += 1
        part = logits[:, k0:k1, r0:r1, c0:c1].float()  # (C, planes, rows, columns) read by the box
        # products and sums in place (the same float32 operations, fewer large temporaries)
        part = part.index_select(3, x_lo).mul_(x_w0).add_(part.index_select(3, x_hi).mul_(x_w1))
        scores = part.index_select(2, y_lo).mul_(y_w0[:, None]).add_(part.index_select(2, y_hi).mul_(y_w1[:, None]))
        del part
        index = _argmax_classes(scores)
        a = lo_t[z:z_end].to(device) - k0
        b = hi_t[z:z_end].to(device) - k0
        result = index[a]
        differ = (result != index[b]) & blend[z:z_end, None, None]
        s, y, x = differ.nonzero(as_tuple=True)
        if s.numel():
            mixed = scores[:, a[s], y, x] * w_lo[z:z_end][s] + scores[:, b[s], y, x] * w_hi[z:z_end][s]
            result[s, y, x] = _argmax_classes(mixed)
        out[z:z_end, y0:y1, x0:x1] = result
        z = z_end
    return out


def _linear_taps(n: int, N: int, start: int, stop: int, device: torch.device):
    """Linear interpolation from ``n`` to ``N`` samples with ``align_corners=False``, for the
    output positions ``start .. stop - 1``: source indices (low, high) and their weights, as
    ``F.interpolate`` computes them (float32 source position ``(i + 0.5) * n / N - 0.5``,
    at least 0; the high index clamped to ``n - 1``). For ``n == N`` the weights are 1 and 0."""
    scale = np.float32(n) / np.float32(N)
    position = np.arange(start, stop, dtype=np.float32)
    src = np.maximum(scale * (position + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    lo = np.minimum(np.floor(src).astype(np.int64), n - 1)
    weight = np.clip(src - lo.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    hi = np.where(lo < n - 1, lo + 1, lo)
    return (torch.from_numpy(lo).to(device), torch.from_numpy(hi).to(device),
            torch.from_numpy(np.float32(1.0) - weight).to(device), torch.from_numpy(weight).to(device))


def _foreground_box(
    foreground: torch.Tensor, shape: tuple[int, int, int], size: tuple[int, int, int]
) -> tuple[tuple[int, int], ...] | None:
    """Output ranges ``(start, stop)`` per axis that may hold a class other than 0 after
    upsampling ``shape`` to ``size``: output index ``i`` samples the model grid at
    ``(i + 0.5) * n / N - 0.5`` (``align_corners=False``), so it is kept when the model voxel
    below that point lies within two voxels of the model-grid bounding box of ``foreground``
    (a margin wider than any rounding of the interpolation's own index arithmetic). None when
    ``foreground`` is empty."""
    if not bool(foreground.any()):
        return None
    ranges = []
    for axis, (n, N) in enumerate(zip(shape, size, strict=True)):
        other = tuple(a for a in range(3) if a != axis)
        present = foreground.amax(dim=other).nonzero()[:, 0]
        first, last = int(present[0]), int(present[-1])
        below = np.floor(np.clip((np.arange(N) + 0.5) * (n / N) - 0.5, 0, n - 1))
        keep = np.flatnonzero((below >= first - 2) & (below <= last + 1))
        ranges.append((int(keep[0]), int(keep[-1]) + 1))
    return tuple(ranges)


def _argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    """Argmax over the first axis of (C, ...) as uint8, by elementwise comparisons (much faster
    on CPU than ``torch.argmax(dim=0)``, which reduces over a strided axis); ties keep the
    lowest index, as ``torch.argmax`` does."""
    best = scores[0]
    index = torch.zeros(best.shape, dtype=torch.uint8, device=scores.device)
    for c in range(1, scores.shape[0]):
        index.masked_fill_(scores[c] > best, c)
        if c + 1 < scores.shape[0]:
            best = torch.maximum(best, scores[c])
    return index

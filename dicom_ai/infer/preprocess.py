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
    logits: torch.Tensor, size: tuple[int, int, int], slab: int = 128
) -> torch.Tensor:
    """Trilinear upsampling of class scores to ``size`` followed by argmax, computed only in the
    bounding box of the classes other than 0 (the background), on the device of ``logits``.

    Equivalent to ``F.interpolate(logits, size, mode="trilinear", align_corners=False)``
    followed by ``argmax`` over classes (ties to the lowest index), done separably: each model
    slice upsampled in-plane (bilinear: columns, then rows, with the source indices and weights
    of ``F.interpolate``, :func:`_linear_taps`), and each output slice the linear blend of its
    two neighbouring model slices. Scores are blends of neighbouring model voxels with
    non-negative weights, which gives three rules that keep the work small without changing any
    voxel:

    * where class 0 wins (ties included) at all of them it wins in the blend too: outside the
      model-grid bounding box of the voxels whose argmax is not 0, widened by two model voxels,
      the output is 0 and is not computed;
    * where the four model pixels around an output pixel of a slice have the same argmax class,
      by a margin over every lower class that float32 rounding cannot close
      (:func:`_settled_classes`), the in-plane blend has that class too: it is looked up, and
      the in-plane scores are computed only for the other pixels (the contours);
    * where both neighbouring model slices have the same in-plane argmax class, every blend of
      them has it too, so the blend is computed only for the pixels where they differ.

    The scores that are computed are the float32 products and sums of the separable blend as
    separate operations (the same on CPU and GPU), read from ``logits`` at any strides (no copy
    of a crop of padded planes); ``F.interpolate``'s kernel may fuse them, which can move a
    score by one unit in the last place and so change the argmax only where two classes tie to
    that precision (no voxel of the 275-slice LIDC-IDRI-0314 series with the shipped lung
    model). Memory stays bounded by ``slab`` model slices of the box's in-plane classes and
    their output slices (fewer when they pass 256 MiB) whatever the number of slices; fewer,
    larger parts mean fewer operations, each spread over the CPU threads.

    Parameters
    ----------
    logits:
        (C, d, h, w) class scores (float16/float32) on the model grid, axes (slices, rows,
        columns).
    size:
        Output (D, H, W) in voxels.
    slab:
        Most model slices classified in-plane at once (at least 2).

    Returns
    -------
    torch.Tensor
        uint8 labels (D, H, W) on the same device.
    """
    C, d, h, w = logits.shape
    D, H, W = size
    device = logits.device
    out = torch.zeros((D, H, W), dtype=torch.uint8, device=device)
    model = logits.float()
    coarse = _argmax_classes(model)
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
    # the scores' memory as one run (any strides, e.g. a crop of padded planes), read by offsets
    strides = model.stride()
    flat = _Scores(model.as_strided((sum((n - 1) * st for n, st in zip(model.shape, strides, strict=True)) + 1,), (1,)),
                   strides[0], C)
    strides = strides[1:]
    taps = _taps(h, H, y0, y1, w, W, x0, x1, strides[1], strides[2], device)
    y_lo, y_hi, x_lo, x_hi = y_lo - r0, y_hi - r0, x_lo - c0, x_hi - c0
    settled = _settled_classes(flat, strides, coarse)[:, r0:r1, c0:c1]
    # bytes per model slice of a part: its in-plane classes (uint8, two temporaries) and those
    # of its output slices (uint8, and the copy into the output)
    plane_bytes = (4 + 2 * -(-D // d)) * (y1 - y0) * (x1 - x0)
    step = max(2, min(int(slab), (256 << 20) // max(plane_bytes, 1)))
    z = z_start
    while z < z_stop:
        k0 = lo[z]
        k1 = min(k0 + step, d)
        z_end = z
        while z_end < z_stop and hi[z_end] < k1:
            z_end += 1
        # in-plane argmax: the class of the four model pixels around an output pixel where they
        # settle it, computed from the blended scores elsewhere
        cells = settled[k0:k1]
        cells = _agree(cells.index_select(2, x_lo), cells.index_select(2, x_hi))
        index = _agree(cells.index_select(1, y_lo), cells.index_select(1, y_hi))
        k, y, x = (index == _UNSETTLED).nonzero(as_tuple=True)
        if k.numel():
            index[k, y, x] = _argmax_classes(_bilinear(flat, (k + k0) * strides[0], y, x, taps))
        a = lo_t[z:z_end].to(device) - k0
        result = index.index_select(0, a)
        # an output slice that blends model slices k and k + 1 differs from k where they differ:
        # their in-plane scores there, computed once, blended with each such slice's weights
        k, y, x = (index[1:] != index[:-1]).nonzero(as_tuple=True)
        mixing = blend[z:z_end].nonzero()[:, 0]
        if k.numel() and mixing.numel():
            first = torch.searchsorted(k, torch.arange(k1 - k0 + 1, device=device))
            pair = a[mixing]
            lengths = first[pair + 1] - first[pair]
            slices = torch.repeat_interleave(mixing, lengths)
            ends = lengths.cumsum(0)
            pixel = (torch.arange(int(ends[-1]), device=device)
                     + torch.repeat_interleave(first[pair] - ends + lengths, lengths))
            low = _bilinear(flat, (k + k0) * strides[0], y, x, taps)
            high = _bilinear(flat, (k + k0 + 1) * strides[0], y, x, taps)
            mixed = low[:, pixel] * w_lo[z:z_end][slices] + high[:, pixel] * w_hi[z:z_end][slices]
            result[slices, y[pixel], x[pixel]] = _argmax_classes(mixed)
        out[z:z_end, y0:y1, x0:x1] = result
        z = z_end
    return out


#: In-plane class not settled by the model pixels around an output pixel.
_UNSETTLED = 255

#: Relative margin by which a model pixel's class must beat each lower class for every bilinear
#: blend of pixels of that class to keep it: float32 rounding of the blend (a few units of 2^-24
#: relative to the blended magnitudes) cannot close such a gap, so no lower class ties it.
_MARGIN = 1e-4


class _Scores:
    """Class scores read at voxel offsets: ``memory`` the tensor's memory as one contiguous run,
    ``step`` the offset from one class to the next, ``classes`` their number."""

    def __init__(self, memory: torch.Tensor, step: int, classes: int) -> None:
        self.memory = memory
        self.classes = torch.arange(classes, device=memory.device)[:, None] * step

    def at(self, offsets: torch.Tensor) -> torch.Tensor:
        """Scores (C, n) of the voxels at ``offsets`` (n) within a class."""
        index = (self.classes + offsets[None]).reshape(-1)
        return self.memory.index_select(0, index).view(self.classes.shape[0], -1)


def _settled_classes(flat: _Scores, strides: tuple[int, ...], classes: torch.Tensor) -> torch.Tensor:
    """Per model voxel, its argmax class ``classes`` (uint8 (slices, rows, columns)) where that
    class exceeds every lower class by the relative :data:`_MARGIN`, else :data:`_UNSETTLED`.
    ``flat`` holds the scores, a voxel's offset given by ``strides``.

    A blend of pixels that all have the settled class ``c`` with non-negative weights has
    argmax ``c``: the higher classes cannot exceed it (the products and sums of float32 are
    monotonic), the lower ones stay below it by the margin. Class 0 has no lower class."""
    settled = classes.clone()
    where = (classes != 0).nonzero()
    if not where.numel():
        return settled
    offsets = (where * torch.tensor(strides, device=where.device)).sum(1)
    values = flat.at(offsets)
    chosen = settled[where[:, 0], where[:, 1], where[:, 2]].long()
    best = values.gather(0, chosen[None])[0]
    close = torch.zeros_like(best, dtype=torch.bool)
    for c in range(values.shape[0] - 1):
        lower = values[c]
        near = (best - lower) <= _MARGIN * torch.maximum(best.abs(), lower.abs()) + 1e-30
        close |= near & (chosen > c)
    k, y, x = where[close].unbind(1)
    settled[k, y, x] = _UNSETTLED
    return settled


def _agree(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` where it equals ``b``, else :data:`_UNSETTLED`."""
    return a.masked_fill_(a != b, _UNSETTLED)


def _bilinear(flat: _Scores, k: torch.Tensor, y: torch.Tensor, x: torch.Tensor,
              taps: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """In-plane bilinear scores (C, n) at output pixels (``y``, ``x``) of the box of model
    slice offsets ``k``, with the float32 operations of a separable upsampling: columns first
    (``a * w0 + b * w1``), then rows.

    ``flat`` holds the model's scores; ``taps`` (from :func:`_taps`) the offsets of the model
    rows and columns of each output row and column and their weights, each (2, n)."""
    rows, row_weights, columns, column_weights = taps
    offsets = k + rows[:, None, y] + columns[None, :, x]  # (row lo/hi, column lo/hi, n)
    corners = flat.at(offsets.reshape(-1)).view(-1, 2, 2, k.shape[0])
    along = corners * column_weights[:, x]
    along = along[:, :, 0] + along[:, :, 1]  # (C, row lo/hi, n)
    along = along * row_weights[:, y]
    return along[:, 0] + along[:, 1]


def _taps(h: int, H: int, y0: int, y1: int, w: int, W: int, x0: int, x1: int, row: int, column: int,
          device: torch.device) -> tuple[torch.Tensor, ...]:
    """The box's output rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1`` for :func:`_bilinear`:
    offsets (``row`` and ``column`` strides) of their low and high model rows (2, rows) and their
    weights (2, rows), then the same for the columns (:func:`_linear_taps`)."""
    y_lo, y_hi, y_w0, y_w1 = _linear_taps(h, H, y0, y1, device)
    x_lo, x_hi, x_w0, x_w1 = _linear_taps(w, W, x0, x1, device)
    return (torch.stack([y_lo, y_hi]) * row, torch.stack([y_w0, y_w1]),
            torch.stack([x_lo, x_hi]) * column, torch.stack([x_w0, x_w1]))


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

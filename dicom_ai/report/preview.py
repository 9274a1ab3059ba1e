"""A PNG preview of a segmentation: a few axial slices with the segments overlaid.

For the worklist and for e-mails to the admin; not a DICOM object and not for diagnosis.
Pillow and numpy only.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import ModelManifest
from dicom_ai.report.measure import check_mask

#: Lung window (level, width) in HU for CT.
LUNG_WINDOW = (-600.0, 1500.0)
#: Opacity of the segment colours over the image.
ALPHA = 0.45

_TILE = 384  # pixels, longest side of one slice tile
_GAP = 4
_LEGEND_ROW = 18


def choose_slices(mask: np.ndarray, n_slices: int) -> list[int]:
    """Pick ``n_slices`` slice indices spread evenly over the slices that hold any segment.

    Parameters
    ----------
    mask: numpy.ndarray
        Label mask, shape (slices, rows, columns).
    n_slices: int
        How many slices to show (at least 1).

    Returns
    -------
    list[int]
        Sorted, distinct indices; over the whole volume when the mask is empty.
    """
    n_slices = max(1, int(n_slices))
    occupied = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    candidates = occupied if occupied.size else np.arange(mask.shape[0])
    if candidates.size <= n_slices:
        return [int(i) for i in candidates]
    # Evenly spaced positions strictly inside the occupied range (avoid the thin end caps).
    positions = (np.arange(n_slices) + 0.5) / n_slices * (candidates.size - 1)
    return sorted({int(candidates[int(round(p))]) for p in positions})


def _window(image: np.ndarray, is_ct: bool) -> np.ndarray:
    if is_ct:
        level, width = LUNG_WINDOW
        low, high = level - width / 2, level + width / 2
    else:
        low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
        if high <= low:
            high = low + 1.0
    scaled = (image.astype(np.float32) - low) / (high - low)
    return (np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _tile(
    volume: Volume, mask: np.ndarray, index: int, colors: dict[int, np.ndarray], is_ct: bool
) -> Image.Image:
    gray = _window(volume.array[index], is_ct).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    labels = mask[index]
    for value, color in colors.items():
        where = labels == value
        if where.any():
            rgb[where] = (1.0 - ALPHA) * rgb[where] + ALPHA * color
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    # Square pixels on screen: rows are spacing[1] mm apart, columns spacing[2] mm.
    rows, cols = labels.shape
    height_mm, width_mm = rows * volume.spacing[1], cols * volume.spacing[2]
    scale = _TILE / max(height_mm, width_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    ImageDraw.Draw(image).text((4, 4), f"slice {index + 1}/{mask.shape[0]}", fill=(255, 255, 0))
    return image


def label_mask_npz(mask: np.ndarray, slice_paths: list[str], labels: np.ndarray) -> bytes:
    """The web viewer's copy of a segmentation, as the bytes of an ``.npz`` file (numpy's
    format; :func:`numpy.load` reads it).

    Parameters
    ----------
    mask: numpy.ndarray
        uint8 label mask (slices, rows, columns), stored as ``mask``.
    slice_paths: list[str]
        The source file of each slice, in slice order, stored as ``paths``.
    labels: numpy.ndarray
        (labels, 4): each label's value and R, G, B colour, stored as ``labels``.

    The members are deflated at zlib level 1, not numpy.savez_compressed's default level 6: on
    a 275 x 512 x 512 lung mask that is ~5x faster (0.15 s against 0.7 s) for a file ~1.4x
    larger (~1 MB).
    """
    buf = io.BytesIO()
    arrays = {"mask": np.ascontiguousarray(mask, dtype=np.uint8), "paths": np.array(slice_paths),
              "labels": np.asarray(labels)}
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buf.getvalue()


def write_preview_png(
    volume: Volume,
    mask: np.ndarray,
    manifest: ModelManifest,
    path: Path | str,
    n_slices: int = 4,
) -> Path:
    """Write a PNG montage of ``n_slices`` axial slices with the segments overlaid.

    Slices are windowed (lung window W 1500 / L -600 HU for CT, 1st-99th percentile
    otherwise), each label is blended in its manifest colour at :data:`ALPHA` opacity, and a
    title (model name and version, "not for diagnostic use") and a colour legend are drawn
    below the tiles.

    Parameters
    ----------
    volume: dicom_ai.infer.volume.Volume
        Source volume; ``array`` (slices, rows, columns), in HU for CT.
    mask: numpy.ndarray
        uint8 label mask (slices, rows, columns) on the same grid.
    manifest: dicom_ai.package.manifest.ModelManifest
        Labels (names, colours), model name and version.
    path: pathlib.Path | str
        Where to write the PNG; missing parent folders are created.
    n_slices: int, optional
        Number of slices in the montage, spread over the slices that hold a segment.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If the mask does not fit the volume or the manifest.
    """
    mask = check_mask(volume, mask, manifest)
    is_ct = manifest.modality.upper() == "CT"
    if volume.datasets:
        is_ct = str(volume.datasets[0].get("Modality", manifest.modality)).upper() == "CT"
    colors = {
        label.value: np.asarray(label.color, dtype=np.float32) for label in manifest.labels
    }
    tiles = [_tile(volume, mask, i, colors, is_ct) for i in choose_slices(mask, n_slices)]

    per_row = min(len(tiles), 2 if len(tiles) == 4 else 3) or 1
    grid_rows = math.ceil(len(tiles) / per_row)
    tile_w = max(t.width for t in tiles)
    tile_h = max(t.height for t in tiles)
    legend_h = _LEGEND_ROW * (2 + len(manifest.labels)) + _GAP
    width = max(per_row * tile_w + (per_row + 1) * _GAP, 320)
    height = grid_rows * tile_h + (grid_rows + 1) * _GAP + legend_h
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, per_row)
        canvas.paste(tile, (_GAP + c * (tile_w + _GAP), _GAP + r * (tile_h + _GAP)))

    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    y = grid_rows * (tile_h + _GAP) + _GAP
    draw.text(
        (_GAP, y),
        f"{manifest.name} {manifest.version} - AI result, not for diagnostic use",
        fill=(255, 255, 255),
        font=font,
    )
    for label in manifest.labels:
        y += _LEGEND_ROW
        n = int(np.count_nonzero(mask == label.value))
        draw.rectangle((_GAP, y + 2, _GAP + 12, y + 14), fill=tuple(label.color))
        draw.text(
            (_GAP + 18, y),
            f"{label.name} ({n * volume.voxel_volume_ml:.1f} mL)",
            fill=(255, 255, 255),
            font=font,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 1 rather than Pillow's 6: ~0.03 s instead of ~0.11 s for a ~800 x 900 preview,
    # a somewhat larger file
    canvas.save(path, format="PNG", compress_level=1)
    return path

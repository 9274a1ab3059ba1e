"""Slices of a processed series as PNG, with the segmentation over the image."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from dicom_ai.infer.volume import preferred_pixels

#: CT window presets: name -> (width, level) in HU
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500, -600),
    "mediastinum": (400, 40),
    "abdomen": (400, 50),
    "bone": (2000, 500),
}
ALPHA = 0.4  # segment opacity


class MaskCache:
    """The label masks of the last few jobs viewed (each is (slices, rows, columns) uint8)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: OrderedDict[Path, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> dict:
        """``mask``, ``paths`` (slice files, relative to data_dir) and ``colors`` of a job.

        Raises
        ------
        FileNotFoundError
            If the job wrote no mask (not done, or failed).
        """
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        with np.load(path) as npz:
            item = {"mask": npz["mask"], "paths": [str(p) for p in npz["paths"]],
                    "colors": {int(row[0]): tuple(int(c) for c in row[1:4]) for row in npz["labels"]}}
        with self._lock:
            self._items[path] = item
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return item


def render_slice(data_dir: Path, item: dict, index: int, preset: str = "lung",
                 overlay: bool = True) -> bytes:
    """PNG of slice ``index`` (0 = first in slice order) in a window preset, segments blended.

    Raises
    ------
    IndexError
        If ``index`` is outside the series.
    KeyError
        If ``preset`` is not one of :data:`PRESETS`.
    """
    if not 0 <= index < len(item["paths"]):
        raise IndexError(index)
    width, level = PRESETS[preset]
    ds = pydicom.dcmread(Path(data_dir) / item["paths"][index])
    hu = preferred_pixels(ds).astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0)
    grey = np.clip((hu - (level - width / 2)) / width, 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if overlay:
        labels = item["mask"][index]
        for value, color in item["colors"].items():
            where = labels == value
            rgb[where] = (1 - ALPHA) * rgb[where] + ALPHA * np.array(color, np.float32)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()

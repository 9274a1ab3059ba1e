"""PNG preview (dicom_ai.report.preview)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dicom_ai.report.preview import choose_slices, write_preview_png


def test_choose_slices() -> None:
    mask = np.zeros((50, 4, 4), np.uint8)
    mask[10:20, 1, 1] = 1
    picked = choose_slices(mask, 4)
    assert len(picked) == 4 and all(10 <= i < 20 for i in picked)
    assert choose_slices(np.zeros((3, 2, 2), np.uint8), 4) == [0, 1, 2]


def test_preview_png(tmp_path, small_volume, small_mask, manifest) -> None:
    path = write_preview_png(small_volume, small_mask, manifest, tmp_path / "p.png", n_slices=4)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.width >= 2 * 384 and im.height >= 2 * 384
        pixels = np.asarray(im)
    # both segment colours are blended in somewhere: look for strongly blue and orange pixels
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    assert np.any(b - r > 80) and np.any(r - b > 80)

"""The outline of a segment on a slice (SR SCOORD POLYLINE): a closed polygon on pixel corners
that encloses exactly the largest 4-connected part of the region, holes filled."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicom_ai.report.outline import largest_cross_section, largest_part, region_outline


def _area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:])))


def test_rectangle_is_four_corners() -> None:
    region = np.zeros((5, 6), bool)
    region[1:3, 1:4] = True  # rows 1-2, columns 1-3
    assert region_outline(region).tolist() == [[1, 1], [4, 1], [4, 3], [1, 3], [1, 1]]


@pytest.mark.parametrize("seed", range(5))
def test_polygon_encloses_exactly_the_part(seed) -> None:
    """On random masks the polygon's area is the pixel count of the largest 4-connected part
    with its holes filled (holes: background not 8-connected to the outside), and every
    point is a pixel corner."""
    rng = np.random.default_rng(seed)
    for _ in range(60):
        part = largest_part(rng.random((24, 24)) < 0.55)
        points = region_outline(part)
        solid = ndimage.binary_fill_holes(part, structure=np.ones((3, 3)))
        assert _area(points) == solid.sum()
        assert (points == points.round()).all() and (points[0] == points[-1]).all()


def test_largest_cross_section_on_a_lung_mask(lidc_mask) -> None:
    cut = largest_cross_section(lidc_mask, 1)
    counts = (lidc_mask == 1).sum(axis=(1, 2))
    assert cut is not None and cut.slice_index == int(np.argmax(counts))
    assert cut.region.sum() <= counts.max() and cut.region.sum() > 0.9 * counts.max()
    assert largest_cross_section(np.zeros((3, 4, 4), np.uint8), 1) is None
    with pytest.raises(ValueError, match="empty"):
        region_outline(np.zeros((4, 4), bool))

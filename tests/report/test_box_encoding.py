"""Measurements and SEG pixel data computed within the box of the labelled voxels equal the
whole-volume computation to the last bit, on the full 275-slice LIDC series."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_ai.report.measure import check_mask, measure_labels
from dicom_ai.report.seg import build_seg

from .conftest import make_manifest


def test_measurements_equal_whole_volume(lidc_volume, lidc_mask, manifest) -> None:
    result = measure_labels(lidc_volume, lidc_mask, manifest)
    for value, m in result.items():
        inside = lidc_volume.array[lidc_mask == value].astype(np.float64)
        assert m.voxel_count == inside.size > 0
        # exact: the same voxels in the same order give the same sums
        assert (m.mean, m.std, m.minimum, m.maximum) == (
            float(inside.mean()), float(inside.std()), float(inside.min()), float(inside.max()))


@pytest.mark.parametrize("where", ["inside", "corner"])
def test_unknown_value_found_anywhere(small_volume, small_mask, manifest, where) -> None:
    bad = small_mask.copy()
    z, y, x = np.argwhere(small_mask == 2)[len(np.argwhere(small_mask == 2)) // 2] if where == "inside" else (-1, -1, -1)
    bad[z, y, x] = 4
    with pytest.raises(ValueError, match=r"\[4\]"):
        check_mask(small_volume, bad, manifest)
    with pytest.raises(ValueError, match=r"\[4\]"):
        measure_labels(small_volume, bad, manifest)


def frames_by_slice(seg, volume) -> dict[tuple[int, int], np.ndarray]:
    """(segment number, source slice index) -> boolean frame, through each frame's Derivation
    Image Sequence (PS3.3 C.7.6.16.2.6) and Segment Identification (C.8.20.2)."""
    index = {str(ds.SOPInstanceUID): i for i, ds in enumerate(volume.datasets)}
    frames = seg.pixel_array
    out = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        out[number, index[uid]] = frame.astype(bool)
    return out


def test_seg_frames_leave_mask_unchanged(lidc_volume, lidc_mask, manifest) -> None:
    """Label values 1, 2 are their segment numbers: the mask goes to highdicom as it is, and
    comes back unchanged from the SEG's frames (with and without the empty frames)."""
    before = lidc_mask.copy()
    for omit in (True, False):
        seg = build_seg(lidc_volume, lidc_mask, manifest, omit_empty_frames=omit)
        frames = frames_by_slice(seg, lidc_volume)
        for (number, z), frame in frames.items():
            assert np.array_equal(frame, lidc_mask[z] == number)
        expected = {(v, int(z)) for v in (1, 2) for z in np.flatnonzero((lidc_mask == v).any(axis=(1, 2)))}
        if omit:
            assert set(frames) == expected
        else:
            assert len(frames) == 2 * lidc_mask.shape[0]
    assert np.array_equal(lidc_mask, before)


def test_non_consecutive_values_translated_in_box(lidc_volume, lidc_mask) -> None:
    """Label values 3, 7 become segment numbers 1, 2 (PS3.3 C.8.20.2: segments are numbered from
    1): every frame holds its segment's voxels, and the frames outside the labelled box are empty."""
    from .conftest import sub_volume

    volume = sub_volume(lidc_volume, 120, 140)
    mask = np.choose(lidc_mask[120:140], [0, 3, 7]).astype(np.uint8)
    mask[:5] = 0  # slices outside the box of the labelled voxels
    seg = build_seg(volume, mask, make_manifest((3, 7)), omit_empty_frames=False)
    frames = frames_by_slice(seg, volume)
    assert len(frames) == 2 * 20
    for (number, z), frame in frames.items():
        assert np.array_equal(frame, mask[z] == (3, 7)[number - 1])

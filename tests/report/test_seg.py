"""DICOM SEG (dicom_ai.report.seg): attributes and the geometry round trip on a real series."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

import dicom_ai
from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import ModelManifest
from dicom_ai.report import build_seg

from .conftest import make_manifest

TOLERANCE_MM = 1e-3


def _floats(value) -> np.ndarray:
    return np.array([float(v) for v in value], dtype=np.float64)


def read_back_mask(
    path: Path, volume: Volume, manifest: ModelManifest, *, omit_empty_frames: bool
) -> np.ndarray:
    """Read a SEG file and rebuild the label mask on the volume's grid, checking each frame.

    Every frame is mapped to its source slice twice: by the SOP Instance UID in its Derivation
    Image Sequence and by its Image Position (Patient) (nearest source slice within 1e-3 mm);
    both must agree. Orientation and pixel spacing must equal the source's.
    """
    seg = hd.seg.segread(path)
    source = volume.datasets
    index_by_uid = {str(ds.SOPInstanceUID): i for i, ds in enumerate(source)}
    source_ipp = np.array([_floats(ds.ImagePositionPatient) for ds in source])
    source_iop = _floats(source[0].ImageOrientationPatient)

    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = _floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
    assert np.allclose(iop, source_iop, atol=1e-6)
    spacing = _floats(shared.PixelMeasuresSequence[0].PixelSpacing)
    assert np.allclose(spacing, _floats(source[0].PixelSpacing), atol=1e-6)
    assert (seg.Rows, seg.Columns) == (source[0].Rows, source[0].Columns)
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID

    # Segment number -> label value, checked on the coded type.
    value_of_segment = {}
    for item in seg.SegmentSequence:
        label = manifest.labels[int(item.SegmentNumber) - 1]
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == label.type.value
        value_of_segment[int(item.SegmentNumber)] = label.value

    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    assert frames.shape[0] == int(seg.NumberOfFrames)
    out = np.zeros(volume.array.shape, dtype=np.uint8)
    seen: set[tuple[int, int]] = set()
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        refs = item.DerivationImageSequence[0].SourceImageSequence
        assert len(refs) == 1
        k = index_by_uid[str(refs[0].ReferencedSOPInstanceUID)]
        assert refs[0].ReferencedSOPClassUID == source[k].SOPClassUID
        ipp = _floats(item.PlanePositionSequence[0].ImagePositionPatient)
        distance = np.linalg.norm(source_ipp - ipp, axis=1)
        assert int(np.argmin(distance)) == k
        assert distance[k] <= TOLERANCE_MM
        # and the volume's own geometry puts slice k there too
        expected = volume.index_to_patient(np.array([[k, 0, 0]]))[0]
        assert np.linalg.norm(expected - ipp) <= TOLERANCE_MM
        if "PlaneOrientationSequence" in item:
            assert np.allclose(
                _floats(item.PlaneOrientationSequence[0].ImageOrientationPatient), source_iop
            )
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        assert (k, number) not in seen
        seen.add((k, number))
        on = frames[f] > 0
        if omit_empty_frames:
            assert on.any()
        assert not np.any(out[k][on])  # the segments of this mask never overlap
        out[k][on] = value_of_segment[number]
    if not omit_empty_frames:
        assert len(seen) == volume.array.shape[0] * len(manifest.labels)
    return out


def _check_attributes(seg: hd.seg.Segmentation, volume: Volume, manifest: ModelManifest) -> None:
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    assert seg.Modality == "SEG"
    assert seg.Manufacturer == "dicom-ai"
    assert seg.SoftwareVersions == f"{manifest.version} / dicom-ai {dicom_ai.__version__}"
    assert seg.SeriesDescription == "AI Lung segmentation (dicom-ai-lung 1.0.0)"
    assert seg.SeriesNumber == 901
    assert seg.ContentLabel == "DICOM_AI_LUNG"
    assert seg.StudyInstanceUID == volume.datasets[0].StudyInstanceUID
    assert len(seg.SegmentSequence) == len(manifest.labels)
    for number, (item, label) in enumerate(zip(seg.SegmentSequence, manifest.labels, strict=False), start=1):
        assert item.SegmentNumber == number
        assert item.SegmentLabel == label.name
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == manifest.name
        assert manifest.name in item.SegmentDescription
        assert manifest.version in item.SegmentDescription
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (manifest.name, manifest.version)
        assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == label.category.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == label.type.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        assert np.abs(np.subtract(rgb, label.color)).max() <= 1
        assert item.TrackingUID
    referenced = {
        str(i.ReferencedSOPInstanceUID)
        for s in seg.ReferencedSeriesSequence
        for i in s.ReferencedInstanceSequence
    }
    assert referenced == {str(ds.SOPInstanceUID) for ds in volume.datasets}


@pytest.mark.parametrize("omit", [True, False])
def test_round_trip_subset(tmp_path, small_volume, small_mask, manifest, omit) -> None:
    seg = build_seg(small_volume, small_mask, manifest, omit_empty_frames=omit)
    _check_attributes(seg, small_volume, manifest)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    out = read_back_mask(path, small_volume, manifest, omit_empty_frames=omit)
    assert np.array_equal(out, small_mask)


def test_round_trip_highdicom_api(tmp_path, small_volume, small_mask, manifest) -> None:
    """highdicom's own reader agrees, frame by source instance."""
    seg = build_seg(small_volume, small_mask, manifest)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    back = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in small_volume.datasets]
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=False
    )
    lut = np.zeros(256, np.uint8)
    for number, label in enumerate(manifest.labels, start=1):
        lut[number] = label.value
    assert np.array_equal(lut[pixels], small_mask)


def test_non_consecutive_label_values(tmp_path, lidc_volume, lidc_mask) -> None:
    from .conftest import sub_volume

    manifest = make_manifest((3, 7))
    volume = sub_volume(lidc_volume, 130, 138)
    mask = np.choose(lidc_mask[130:138], [0, 3, 7]).astype(np.uint8)
    seg = build_seg(volume, mask, manifest)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    assert np.array_equal(read_back_mask(path, volume, manifest, omit_empty_frames=True), mask)


def test_empty_segment_and_empty_mask(tmp_path, small_volume, small_mask, manifest) -> None:
    only_right = np.where(small_mask == 1, 1, 0).astype(np.uint8)
    seg = build_seg(small_volume, only_right, manifest)
    assert len(seg.SegmentSequence) == 2
    seg.save_as(tmp_path / "a.dcm")
    out = read_back_mask(tmp_path / "a.dcm", small_volume, manifest, omit_empty_frames=True)
    assert np.array_equal(out, only_right)

    empty = np.zeros_like(small_mask)
    seg = build_seg(small_volume, empty, manifest)  # keeps all (empty) frames
    seg.save_as(tmp_path / "b.dcm")
    out = read_back_mask(tmp_path / "b.dcm", small_volume, manifest, omit_empty_frames=False)
    assert not out.any()


def test_refuses_bad_input(small_volume, small_mask, manifest) -> None:
    with pytest.raises(ValueError):
        build_seg(small_volume, small_mask[1:], manifest)
    from dataclasses import replace

    with pytest.raises(ValueError, match="source headers"):
        build_seg(replace(small_volume, datasets=small_volume.datasets[1:]), small_mask, manifest)


def test_full_series_round_trip(tmp_path, lidc_volume, lidc_mask, manifest) -> None:
    """All 275 slices, both with and without empty frames; prints the sizes."""
    sizes = {}
    for omit in (True, False):
        seg = build_seg(lidc_volume, lidc_mask, manifest, omit_empty_frames=omit)
        path = tmp_path / f"seg_{omit}.dcm"
        seg.save_as(path)
        sizes[omit] = (path.stat().st_size, int(seg.NumberOfFrames))
        out = read_back_mask(path, lidc_volume, manifest, omit_empty_frames=omit)
        assert np.array_equal(out, lidc_mask)
    print(
        f"\nfull LIDC SEG: omit_empty_frames=True {sizes[True][0]} bytes "
        f"({sizes[True][1]} frames), False {sizes[False][0]} bytes ({sizes[False][1]} frames)"
    )
    assert sizes[True][0] <= sizes[False][0]

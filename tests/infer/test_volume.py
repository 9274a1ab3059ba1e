"""load_series: sorting, geometry checks, HU rescale, compressed decoding (real data)."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from dicom_ai.infer.volume import VolumeError, load_series

from .conftest import CRLM, DATA, GE_TILT, TOTALSEG, files


@pytest.fixture(scope="module")
def lidc_volume(lidc_files):
    return load_series(lidc_files)


def test_lidc_geometry(lidc_volume, lidc_files):
    v = lidc_volume
    assert v.array.shape == (275, 512, 512) and v.array.dtype == np.float32
    assert v.spacing == pytest.approx((1.0, 0.78125, 0.78125), abs=1e-6)
    np.testing.assert_allclose(v.direction, np.eye(3), atol=1e-6)
    zs = [float(ds.ImagePositionPatient[2]) for ds in v.datasets]
    assert zs == sorted(zs) and v.origin[2] == pytest.approx(min(zs))
    assert len(v.paths) == len(v.datasets) == 275
    assert all("PixelData" not in ds for ds in v.datasets)
    # index_to_patient of the last slice's first voxel is its Image Position (Patient)
    last = np.asarray([float(x) for x in v.datasets[-1].ImagePositionPatient])
    np.testing.assert_allclose(v.index_to_patient(np.array([[274, 0, 0]]))[0], last, atol=1e-3)
    np.testing.assert_allclose(v.patient_to_index(last[None])[0], [274, 0, 0], atol=1e-6)


def test_lidc_hounsfield(lidc_volume):
    a = lidc_volume.array
    mid = a[a.shape[0] // 2]
    # air in front of the patient (top rows, inside the reconstruction circle)
    assert -1050 < float(np.median(mid[40:60, 236:276])) < -950
    # soft tissue exists and nothing is scaled oddly
    assert a.min() >= -1100 and a.max() < 4000
    assert np.any((mid > 0) & (mid < 100))


def test_shuffled_files_give_same_volume(lidc_volume, lidc_files):
    shuffled = list(lidc_files)
    random.Random(1).shuffle(shuffled)
    v = load_series(shuffled)
    np.testing.assert_array_equal(v.array, lidc_volume.array)
    np.testing.assert_allclose(v.origin, lidc_volume.origin)
    assert v.paths == lidc_volume.paths


def test_sorted_by_position_not_instance_number(lidc_subset):
    reference = load_series(lidc_subset)
    numbers = list(range(1, len(lidc_subset) + 1))
    random.Random(2).shuffle(numbers)
    for path, n in zip(lidc_subset, numbers, strict=False):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = n
        ds.save_as(path)
    v = load_series(list(reversed(lidc_subset)))
    np.testing.assert_array_equal(v.array, reference.array)
    zs = [float(ds.ImagePositionPatient[2]) for ds in v.datasets]
    assert zs == sorted(zs)
    assert [int(ds.InstanceNumber) for ds in v.datasets] != sorted(numbers)


def test_localizer_and_non_images_left_out(lidc_subset, tmp_path):
    scout = pydicom.dcmread(lidc_subset[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal scout, same series
    scout.SOPInstanceUID = generate_uid()
    scout.save_as(tmp_path / "scout.dcm")
    (tmp_path / "notes.txt").write_text("not DICOM")
    sr = DATA / "edge_cases" / "pydicom-wheel" / "test-SR.dcm"
    shutil.copy(sr, tmp_path / "report.dcm")
    extra = [tmp_path / "scout.dcm", tmp_path / "notes.txt", tmp_path / "report.dcm"]
    v = load_series(lidc_subset + extra)
    assert v.array.shape[0] == len(lidc_subset)


def test_uneven_spacing_refused(lidc_subset):
    with pytest.raises(VolumeError, match="uneven slice spacing"):
        load_series(lidc_subset[:5] + lidc_subset[6:])


def test_duplicate_position_refused(lidc_subset, tmp_path):
    dup = pydicom.dcmread(lidc_subset[3])
    dup.SOPInstanceUID = generate_uid()
    dup.save_as(tmp_path / "dup.dcm")
    with pytest.raises(VolumeError, match="share a position"):
        load_series(lidc_subset + [tmp_path / "dup.dcm"])


def test_mixed_series_refused(lidc_subset):
    ds = pydicom.dcmread(lidc_subset[0])
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(lidc_subset[0])
    with pytest.raises(VolumeError, match="different series"):
        load_series(lidc_subset)


def test_mixed_orientation_refused(lidc_subset):
    ds = pydicom.dcmread(lidc_subset[4])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.995, 0.0998]
    ds.save_as(lidc_subset[4])
    with pytest.raises(VolumeError, match="mixes orientations"):
        load_series(lidc_subset)


def test_gantry_tilt_refused():
    if not GE_TILT.is_dir():
        pytest.skip("edge case data missing")
    with pytest.raises(VolumeError, match="gantry-tilted"):
        load_series(files(GE_TILT))


def test_multiframe_refused():
    path = DATA / "edge_cases" / "pydicom-data" / "eCT_Supplemental.dcm"
    with pytest.raises(VolumeError, match="multi-frame"):
        load_series([path])


def test_nothing_to_load(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(VolumeError, match="no image slices"):
        load_series([tmp_path / "a.txt"])


def test_jpeg2000_totalsegmentator_series():
    v = load_series(files(TOTALSEG))
    assert v.array.shape == (20, 512, 512)
    assert v.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    # data sets have empty SOP Class/Instance UIDs; the file meta has them - still images
    assert v.datasets[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    body = v.array[10, 200:300, 200:300]
    assert -200 < float(np.median(body)) < 200
    assert v.array.min() >= -1100


def test_crlm_5mm():
    v = load_series(files(CRLM))
    assert v.array.shape == (51, 512, 512)
    assert v.spacing[0] == pytest.approx(5.0)


@pytest.mark.parametrize("syntax", [RLELossless, "1.2.840.10008.1.2.4.80"])
def test_compressed_copy_decodes_identically(lidc_subset, tmp_path, syntax):
    reference = load_series(lidc_subset[:3])
    out = []
    for i, p in enumerate(lidc_subset[:3]):
        ds = pydicom.dcmread(p)
        try:
            ds.compress(syntax)
        except Exception as exc:  # noqa: BLE001 - encoder plugin not installed
            pytest.skip(f"no encoder for {syntax}: {exc}")
        q = tmp_path / f"c{i}.dcm"
        ds.save_as(q)
        out.append(q)
    v = load_series(out)
    np.testing.assert_array_equal(v.array, reference.array)

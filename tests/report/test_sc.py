"""Secondary Capture with burned-in segments (dicom_ai.report.sc) on real LIDC-IDRI-0314 slices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import peers
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from dicom_ai.infer.volume import Volume
from dicom_ai.report import uids
from dicom_ai.report.measure import measure_labels
from dicom_ai.report.preview import ALPHA, LUNG_WINDOW
from dicom_ai.report.sc import (
    DISCLAIMER,
    EXPECTED_DCIODVFY_WARNINGS,
    KIND,
    _legend_lines,
    build_secondary_capture,
    render_annotation,
    render_slices,
)
from dicom_ai.report.seg import series_description

from .conftest import sub_volume

#: dciodvfy warnings of the LIDC source itself, copied with the General Study module: its Study
#: Time and Study ID are empty (Type 2, copied as they are).
INHERITED_WARNINGS = [
    "Missing attribute or value that would be needed to build DICOMDIR - Study Time",
    "Missing attribute or value that would be needed to build DICOMDIR - Study ID",
]

GEOMETRY = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
            "PixelSpacing", "SliceThickness", "SliceLocation")


@pytest.fixture(scope="module")
def five(small_volume: Volume, small_mask: np.ndarray) -> tuple[Volume, np.ndarray]:
    """Five slices through both lungs (slices 118..122 of the series)."""
    return sub_volume(small_volume, 18, 23), small_mask[18:23]


@pytest.fixture(scope="module")
def measurements(five, manifest):
    volume, mask = five
    return measure_labels(volume, mask, manifest)


@pytest.fixture(scope="module")
def images(five, manifest, measurements) -> list[pydicom.Dataset]:
    volume, mask = five
    return build_secondary_capture(volume, mask, manifest, measurements, device_serial_number="node-1")


def pixels(ds: pydicom.Dataset) -> np.ndarray:
    """(rows, columns, 3) uint8 from the data set's Pixel Data."""
    return np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns, 3)


def expected_grey(hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """The linear VOI function of PS3.3 C.11.2.1.2.1 to 0..255, written out independently."""
    c, w = window
    y = ((hu - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    return np.clip(y, 0, 255)


def test_one_instance_per_slice_with_source_geometry(images, five, manifest) -> None:
    volume, _ = five
    assert len(images) == len(volume.datasets) == 5
    for k, (ds, src) in enumerate(zip(images, volume.datasets, strict=True)):
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.InstanceNumber == k + 1
        for keyword in GEOMETRY:
            assert ds[keyword].value == src[keyword].value, keyword
        assert ds.PatientOrientation == ["L", "P"]  # IOP 1\0\0\0\1\0
        ref = ds.SourceImageSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
            src.SOPClassUID, src.SOPInstanceUID)
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.BurnedInAnnotation == "YES"
        assert ds.ConversionType == "WSD"
        assert ds.Modality == "OT"
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration) == (3, "RGB", 0)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (8, 8, 7)
        assert (ds.Rows, ds.Columns) == volume.array.shape[1:]
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 3
        assert ds.SeriesNumber == 903
        assert ds.SeriesDescription == series_description(manifest, "secondary capture")
        assert ds.Manufacturer == "dicom-ai"
        assert ds.ManufacturerModelName == manifest.name
        assert ds.DeviceSerialNumber == "node-1"
        assert ds.BodyPartExamined == src.BodyPartExamined


def test_patient_and_study_copied(images, five) -> None:
    volume, _ = five
    src = volume.datasets[0]
    for ds in images:
        for keyword in ("PatientName", "PatientID", "PatientSex", "PatientBirthDate",
                        "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                        "ReferringPhysicianName", "PatientIdentityRemoved"):
            assert ds[keyword].value == src[keyword].value, keyword
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID


def test_labels_in_their_colour_background_grey(images, five, manifest, measurements) -> None:
    volume, mask = five
    (rows, cols), _, _ = render_annotation(*volume.array.shape[1:], manifest, measurements)
    colors = {label.value: np.asarray(label.color, dtype=np.float64) for label in manifest.labels}
    for k, ds in enumerate(images):
        rgb = pixels(ds).astype(np.float64)
        outside = np.ones(mask[k].shape, dtype=bool)
        outside[rows, cols] = False  # the text panel
        grey = expected_grey(volume.array[k])
        background = outside & (mask[k] == 0)
        assert background.sum() > 10_000
        assert np.array_equal(rgb[background][:, 0], rgb[background][:, 1])
        assert np.array_equal(rgb[background][:, 1], rgb[background][:, 2])
        assert np.abs(rgb[background][:, 0] - grey[background]).max() <= 1.0
        for value, color in colors.items():
            where = outside & (mask[k] == value)
            assert where.sum() > 1_000, f"label {value} should be on slice {k}"
            blended = (1 - ALPHA) * grey[where][:, None] + ALPHA * color[None, :]
            assert np.abs(rgb[where] - blended).max() <= 1.5
    # right lung (0, 128, 255) reads blue, left lung (255, 128, 0) orange
    rgb = pixels(images[2]).astype(int)
    right, left = rgb[mask[2] == 1].mean(axis=0), rgb[mask[2] == 2].mean(axis=0)
    assert right[2] > right[0] + 60 and left[0] > left[2] + 60


def test_disclaimer_burned_into_every_image(images, five, manifest, measurements) -> None:
    volume, mask = five
    plain = render_slices(volume, mask, manifest, measurements, annotate=False)
    (rows, cols), _, _ = render_annotation(*volume.array.shape[1:], manifest, measurements)
    # legible at 512 x 512: a panel of three text lines and more, wide enough for the disclaimer
    assert rows.stop >= 4 * 14 and cols.stop >= 200
    for k, ds in enumerate(images):
        rgb = pixels(ds)
        changed = np.any(rgb != plain[k], axis=2)
        assert not changed[rows.stop:, :].any() and not changed[:, cols.stop:].any()
        # the first text line (the disclaimer) has white glyph pixels in every image
        first_line = rgb[rows.start:rows.start + 24, cols]
        assert np.all(first_line >= 250, axis=2).sum() > 100
        assert changed[rows, cols].mean() > 0.5  # the darkened panel


def test_legend_names_labels_and_volumes(manifest, measurements) -> None:
    lines = _legend_lines(manifest, measurements)
    assert lines[0] == (None, DISCLAIMER)
    for label in manifest.labels:
        m = measurements[label.value]
        assert (tuple(label.color), f"{label.name}: {m.volume_ml:.1f} mL") in lines
    missing = _legend_lines(manifest, {})
    assert (tuple(manifest.labels[0].color), f"{manifest.labels[0].name}: volume n/a") in missing


def test_uids_deterministic_and_distinct(images, five, manifest, measurements) -> None:
    volume, mask = five
    again = build_secondary_capture(volume, mask, manifest, measurements)
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in images]
    assert len({d.SOPInstanceUID for d in images}) == len(images)
    source_series = str(volume.datasets[0].SeriesInstanceUID)
    series = uids.result_series_uid(source_series, manifest.name, manifest.version, KIND)
    assert {d.SeriesInstanceUID for d in images} == {series}
    assert series != uids.result_series_uid(source_series, manifest.name, manifest.version, "SEG")
    # another window draws other pixels: new instances, the same series
    other = build_secondary_capture(volume, mask, manifest, measurements, window=(40.0, 400.0))
    assert {d.SeriesInstanceUID for d in other} == {series}
    assert not {d.SOPInstanceUID for d in other} & {d.SOPInstanceUID for d in images}
    # one slice fewer changes the volumes in the legend: every image gets a new SOP Instance UID
    four = sub_volume(volume, 0, 4)
    fewer = build_secondary_capture(four, mask[:4], manifest, measure_labels(four, mask[:4], manifest))
    assert not {d.SOPInstanceUID for d in fewer} & {d.SOPInstanceUID for d in images}


def test_rejects_bad_input(five, manifest, measurements) -> None:
    volume, mask = five
    with pytest.raises(ValueError, match="window width"):
        build_secondary_capture(volume, mask, manifest, measurements, window=(-600.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        build_secondary_capture(volume, mask[:4], manifest, measurements)
    with pytest.raises(ValueError, match="labels"):
        build_secondary_capture(volume, np.where(mask > 0, 7, 0).astype(np.uint8), manifest, measurements)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed")
def test_dciodvfy_clean(tmp_path: Path, images, five) -> None:
    volume, _ = five
    _, source_warnings = peers.dciodvfy(volume.paths[0])
    assert set(INHERITED_WARNINGS) <= set(source_warnings)  # the source has them itself
    for ds in images:
        path = tmp_path / f"{ds.InstanceNumber}.dcm"
        ds.save_as(path, enforce_file_format=True)
        errors, warnings = peers.dciodvfy(path)
        assert errors == [], errors
        assert warnings == [*INHERITED_WARNINGS, *EXPECTED_DCIODVFY_WARNINGS]


@pytest.mark.integration
def test_orthanc_stores_series(tmp_path: Path, images, dcmtk, orthanc) -> None:
    folder = tmp_path / "sc"
    folder.mkdir()
    for ds in images:
        ds.save_as(folder / f"{ds.InstanceNumber}.dcm", enforce_file_format=True)
    sent = peers.storescu("127.0.0.1", orthanc.dicom_port, folder, aec=orthanc.aet, required_only=True)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    series_uid = str(images[0].SeriesInstanceUID)
    found = orthanc.find("Series", {"SeriesInstanceUID": series_uid})
    assert len(found) == 1
    assert len(orthanc.get(f"/series/{found[0]['ID']}")["Instances"]) == len(images)
    assert orthanc.sop_instance_uids(series_uid) == {str(d.SOPInstanceUID) for d in images}
    study = orthanc.get(f"/series/{found[0]['ID']}/study")
    assert study["MainDicomTags"]["StudyInstanceUID"] == images[0].StudyInstanceUID

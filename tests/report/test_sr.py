"""TID 1500 SR (dicom_ai.report.sr): parse back, measurement groups, references to the SEG."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from dicom_ai.report import build_seg, build_sr, measure_labels
from dicom_ai.report.outline import largest_part


@pytest.fixture(scope="module")
def objects(tmp_path_factory, small_volume, small_mask, manifest):
    seg = build_seg(small_volume, small_mask, manifest)
    sr = build_sr(small_volume, small_mask, seg, manifest)
    folder = tmp_path_factory.mktemp("sr")
    sr.save_as(folder / "sr.dcm")
    return seg, hd.sr.srread(folder / "sr.dcm")


def _by_name(measurements, name, derivation=None):
    found = [
        m
        for m in measurements
        if m.name == name and (derivation is None or m.derivation == derivation)
    ]
    assert len(found) == 1, (name, derivation)
    return found[0]


def test_document(objects, small_volume) -> None:
    seg, sr = objects
    src = small_volume.datasets[0]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.PatientID == src.PatientID
    assert sr.SeriesNumber == 902
    assert sr.SeriesDescription == "AI Lung measurements (dicom-ai-lung 1.0.0)"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # evidence: the source series and the SEG
    evidence = {
        str(i.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for i in series.ReferencedSOPSequence
    }
    assert str(seg.SOPInstanceUID) in evidence
    assert {str(ds.SOPInstanceUID) for ds in small_volume.datasets} <= evidence


def test_observer_is_the_device(objects, manifest) -> None:
    _, sr = objects
    items = {}
    for item in sr.ContentSequence:
        if item.RelationshipType == "HAS OBS CONTEXT":
            name = item.ConceptNameCodeSequence[0].CodeMeaning
            if item.ValueType == "CODE":
                items[name] = item.ConceptCodeSequence[0].CodeValue
            elif item.ValueType == "UIDREF":
                items[name] = item.UID
            else:
                items[name] = item.TextValue
    assert items["Observer Type"] == "121007"  # Device
    assert items["Device Observer Name"] == manifest.name
    assert items["Device Observer Model Name"] == manifest.name
    assert items["Device Observer UID"] == sr.ContributingEquipmentSequence[-1].DeviceUID  # the model


def test_measurement_groups(objects, small_volume, small_mask, manifest) -> None:
    seg, sr = objects
    expected = measure_labels(small_volume, small_mask, manifest)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(manifest.labels)
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    for group, label in zip(groups, manifest.labels, strict=False):
        ref = group.referenced_segment
        assert ref is not None
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_sop_class_uid == seg.SOPClassUID
        (number,) = ref.referenced_segment_numbers
        segment = segments[number]
        assert segment.SegmentLabel == label.name
        assert group.tracking_uid == segment.TrackingUID  # same finding in SEG and SR
        source_series = ref.source_series_for_segmentation.value
        assert source_series == small_volume.datasets[0].SeriesInstanceUID
        assert group.finding_type.value == label.type.value
        assert [s.value.value for s in group.finding_sites] == [label.type.value]

        m = expected[label.value]
        measurements = group.get_measurements()
        volume = _by_name(measurements, codes.SCT.Volume)
        assert volume.unit.value == "ml" and volume.unit.scheme_designator == "UCUM"
        assert volume.value == pytest.approx(m.volume_ml, rel=1e-12, abs=1e-12)
        mean = _by_name(measurements, codes.SCT.Mean)
        assert mean.unit.value == "[hnsf'U]"
        assert mean.value == pytest.approx(m.mean, rel=1e-12)
        std = _by_name(measurements, codes.SCT.StandardDeviation)
        assert std.unit.value == "[hnsf'U]" and std.derivation is None  # distinct without one
        assert std.value == pytest.approx(m.std, rel=1e-12)
        for item in measurements:  # algorithm identification on each measurement
            names = {
                c.ConceptNameCodeSequence[0].CodeMeaning: c.get("TextValue")
                for c in item[0].ContentSequence
            }
            assert names["Algorithm Name"] == manifest.name
            assert names["Algorithm Version"] == manifest.version


def test_empty_segment_gets_zero_volume_only(tmp_path, small_volume, small_mask, manifest) -> None:
    only_right = np.where(small_mask == 1, 1, 0).astype(np.uint8)
    seg = build_seg(small_volume, only_right, manifest)
    build_sr(small_volume, only_right, seg, manifest).save_as(tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    groups = sr.content.get_volumetric_roi_measurement_groups()
    left = groups[1].get_measurements()
    assert [m.name.value for m in left] == ["118565006"]
    assert left[0].value == 0.0


def test_precomputed_measurements_are_used(small_volume, small_mask, manifest) -> None:
    seg = build_seg(small_volume, small_mask, manifest)
    given = measure_labels(small_volume, small_mask, manifest)
    a = build_sr(small_volume, small_mask, seg, manifest)
    b = build_sr(small_volume, small_mask, seg, manifest, measurements=given)
    assert a.ContentSequence == b.ContentSequence
    with pytest.raises(ValueError, match="lack labels"):
        build_sr(small_volume, small_mask, seg, manifest, measurements={1: given[1]})


def _comments(group) -> list[str]:
    """TEXT (121106, DCM, "Comment") items of a measurement group, read back with pydicom."""
    return [item.TextValue for item in group[0].ContentSequence
            if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
            and item.ConceptNameCodeSequence[0].CodingSchemeDesignator == "DCM"
            and item.RelationshipType == "CONTAINS"]


def implausible_manifest():
    """The lung manifest with a right lung range the 40-slice LIDC mask (about 363 mL) is
    below, and a left / right ratio range it (about 1.2) is outside."""
    from .conftest import make_manifest

    labels = [lb.model_dump() for lb in make_manifest().labels]
    labels[0]["plausible_volume_ml"] = (1000.0, 6000.0)
    return make_manifest(version="2.0.0", labels=labels,
                         plausible_volume_ratios=[{"numerator": 2, "denominator": 1, "range": (2.0, 3.0)}])


def test_implausible_result_is_said_in_the_groups(tmp_path, small_volume, small_mask, manifest) -> None:
    from dicom_ai.report.plausibility import check_plausibility

    implausible = implausible_manifest()
    measurements = measure_labels(small_volume, small_mask, implausible)
    volume_issue, ratio_issue = check_plausibility(measurements, implausible)
    seg = build_seg(small_volume, small_mask, implausible)
    built = build_sr(small_volume, small_mask, seg, implausible)
    built.save_as(tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    right, left = sr.content.get_volumetric_roi_measurement_groups()
    assert right.finding_type.value == "3341006" and left.finding_type.value == "44029006"
    assert _comments(right) == ["Implausible result: " + volume_issue.reason,
                                "Implausible result: " + ratio_issue.reason]
    assert _comments(left) == ["Implausible result: " + ratio_issue.reason]
    assert volume_issue.reason.startswith("Right lung volume 363 mL is below the plausible range 1000 to 6000 mL")
    # the groups still read back as before: volume, mean and SD, the same values
    assert [m.name.value for m in right.get_measurements()] == ["118565006", "373098007", "386136009"]
    assert right.get_measurements()[0].value == pytest.approx(measurements[1].volume_ml, rel=1e-12)
    # computed by build_sr when not given; the same when given
    again = build_sr(small_volume, small_mask, seg, implausible,
                     plausibility=check_plausibility(measurements, implausible))
    assert again.ContentSequence == built.ContentSequence
    # a plausible result says nothing
    plain_seg = build_seg(small_volume, small_mask, manifest)
    build_sr(small_volume, small_mask, plain_seg, manifest).save_as(tmp_path / "ok.dcm")
    plain = hd.sr.srread(tmp_path / "ok.dcm").content.get_volumetric_roi_measurement_groups()
    assert len(plain) == 2 and all(_comments(g) == [] for g in plain)


def test_nothing_found_is_said_in_every_group(tmp_path, small_volume, manifest) -> None:
    empty = np.zeros(small_volume.shape, np.uint8)
    build_sr(small_volume, empty, build_seg(small_volume, empty, manifest), manifest).save_as(tmp_path / "sr.dcm")
    groups = hd.sr.srread(tmp_path / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    assert [_comments(g) for g in groups] == [["Implausible result: no Right lung or Left lung found"]] * 2
    assert [m.value for g in groups for m in g.get_measurements()] == [0.0, 0.0]


def test_planar_group_on_the_largest_slice(objects, small_volume, small_mask, manifest) -> None:
    """Each segment's outline on the slice where it is largest, with area, mean and SD of that
    cross-section, referenced to that source image and listed in the Image Library."""
    _, sr = objects
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == len(manifest.labels)
    library = {str(e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
               for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"
               for group in item.ContentSequence for e in group.ContentSequence}
    ps = [float(x) for x in small_volume.datasets[0].PixelSpacing]
    for group, label in zip(planar, manifest.labels, strict=True):
        counts = (small_mask == label.value).sum(axis=(1, 2))
        k = int(np.argmax(counts))
        image = str(small_volume.datasets[k].SOPInstanceUID)
        assert group.tracking_identifier == "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
        assert group.finding_type.value == label.type.value
        region = group.roi
        assert region.graphic_type.value == "POLYLINE"
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image
        points = np.asarray(region.value).reshape(-1, 2)
        assert (points[0] == points[-1]).all()  # closed
        x, y = points[:, 0], points[:, 1]
        enclosed = 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:])))  # pixels
        by_name = {m.name.meaning: m for m in group.get_measurements()}
        assert list(by_name) == ["Area", "Mean", "Standard Deviation"]
        assert by_name["Area"].unit.value == "mm2"
        part = largest_part(small_mask[k] == label.value)  # what is outlined; its holes are not
        assert by_name["Area"].value == pytest.approx(part.sum() * ps[0] * ps[1], abs=0.01)
        assert part.sum() <= enclosed
        assert by_name["Mean"].value == pytest.approx(float(small_volume.array[k][part].mean()), abs=0.05)
        assert {by_name["Mean"].unit.value, by_name["Standard Deviation"].unit.value} == {"[hnsf'U]"}
        area_item = next(i for i in group[0].ContentSequence if i.ValueType == "NUM")
        inferred = [i for i in area_item.ContentSequence if i.ValueType == "SCOORD"]
        assert len(inferred) == 1 and inferred[0].RelationshipType == "INFERRED FROM"
        assert np.array_equal(np.asarray(inferred[0].GraphicData, float).reshape(-1, 2), points)
        assert image in library

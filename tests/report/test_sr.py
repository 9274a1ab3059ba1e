"""TID 1500 SR (dicom_ai.report.sr): parse back, measurement groups, references to the SEG."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from dicom_ai.report import build_seg, build_sr, measure_labels


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
    assert items["Device Observer Name"] == "dicom-ai"
    assert items["Device Observer Model Name"] == f"{manifest.name} {manifest.version}"
    assert items["Device Observer UID"]


def test_measurement_groups(objects, small_volume, small_mask, manifest) -> None:
    seg, sr = objects
    expected = measure_labels(small_volume, small_mask, manifest)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(manifest.labels)
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    for group, label in zip(groups, manifest.labels):
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
        mean = _by_name(measurements, codes.DCM.AttenuationCoefficient, codes.SCT.Mean)
        assert mean.unit.value == "[hnsf'U]"
        assert mean.value == pytest.approx(m.mean, rel=1e-12)
        std = _by_name(
            measurements, codes.DCM.AttenuationCoefficient, codes.SCT.StandardDeviation
        )
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

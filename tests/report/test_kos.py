"""IOCM rejection note (dicom_ai.report.kos): a KOS withdrawing a real SEG and SR of LIDC-IDRI-0314."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import peers
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_ai.package.manifest import ModelManifest
from dicom_ai.report import build_seg, build_sr
from dicom_ai.report.identity import PROCESSING_ALGORITHM
from dicom_ai.report.kos import REJECTION_TITLES, build_rejection_note

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage

#: dciodvfy warnings allowed on the note. Both are about the General Study module, which IOCM
#: requires the note to copy from the rejected objects (same study): LIDC-IDRI-0314 has an empty
#: Study Time and Study ID, and its own files get the same two warnings (checked below).
INHERITED_WARNINGS = {
    "Missing attribute or value that would be needed to build DICOMDIR - Study Time",
    "Missing attribute or value that would be needed to build DICOMDIR - Study ID",
}
#: With a manifest, the note names the model as SEG and SR do (dicom_ai.report.identity): the
#: Device UID (0018,1002) of the model is written though the KOS IOD has no General Equipment
#: attribute for it, which makes the note a Standard Extended SOP Class (PS3.4 B.1.3).
IDENTITY_WARNINGS = {
    "Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Dicom dataset contains attributes not present in standard DICOM IOD - "
    "this is a Standard Extended SOP Class",
}


@pytest.fixture(scope="module")
def results(small_volume, small_mask, manifest) -> tuple[hd.seg.Segmentation, hd.sr.Comprehensive3DSR]:
    """A real SEG and SR of the 40-slice LIDC volume: the results to withdraw."""
    seg = build_seg(small_volume, small_mask, manifest)
    sr = build_sr(small_volume, small_mask, seg, manifest)
    return seg, sr


def _evidence(note: Dataset) -> set[tuple[str, str, str, str]]:
    """(study, series, SOP class, SOP instance) of every item of the evidence sequence."""
    return {
        (str(study.StudyInstanceUID), str(series.SeriesInstanceUID),
         str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }


def _expected(*objs: Dataset) -> set[tuple[str, str, str, str]]:
    return {(str(o.StudyInstanceUID), str(o.SeriesInstanceUID), str(o.SOPClassUID),
             str(o.SOPInstanceUID)) for o in objs}


def _content_refs(note: Dataset) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (value type, SOP class) of each reference of the TID 2010 tree."""
    refs = {}
    for item in note.ContentSequence:
        if item.ValueType in ("IMAGE", "COMPOSITE"):
            ref = item.ReferencedSOPSequence[0]
            refs[str(ref.ReferencedSOPInstanceUID)] = (item.ValueType, str(ref.ReferencedSOPClassUID))
    return refs


def test_note_reads_back(tmp_path: Path, results, small_volume) -> None:
    seg, sr = results
    build_rejection_note([seg, sr], description="Replaced by a newer run").save_as(tmp_path / "kos.dcm")

    ds = pydicom.dcmread(tmp_path / "kos.dcm")
    note = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
    source = small_volume.datasets[0]

    assert ds.SOPClassUID == KOS_SOP_CLASS and ds.Modality == "KO"
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001", "DCM", "Rejected for Quality Reasons")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    # same study and patient as the source (and the rejected objects), a series of its own
    assert ds.StudyInstanceUID == source.StudyInstanceUID == seg.StudyInstanceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber"):
        assert ds.get(keyword) == source.get(keyword), keyword
    assert ds.SeriesInstanceUID not in {seg.SeriesInstanceUID, sr.SeriesInstanceUID, source.SeriesInstanceUID}
    assert ds.SeriesNumber == 999 and ds.InstanceNumber == 1
    assert ds.Manufacturer == "dicom-ai" and ds.ManufacturerModelName == "dicom-ai"
    assert ds.SeriesDescription == "AI results withdrawn (superseded)"

    # exactly the rejected instances, in the evidence and in the content tree
    assert _evidence(ds) == _expected(seg, sr)
    assert _content_refs(ds) == {
        str(seg.SOPInstanceUID): ("IMAGE", str(seg.SOPClassUID)),
        str(sr.SOPInstanceUID): ("COMPOSITE", str(sr.SOPClassUID)),
    }
    assert {str(r.referenced_sop_instance_uid) for r in note.content.get_references()} == {
        str(seg.SOPInstanceUID), str(sr.SOPInstanceUID)}
    assert note.resolve_reference(str(sr.SOPInstanceUID)) == (
        str(sr.StudyInstanceUID), str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID))
    texts = [item.TextValue for item in ds.ContentSequence if item.ValueType == "TEXT"]
    assert texts == ["Replaced by a newer run"]


def test_headers_only(tmp_path: Path, results) -> None:
    """Headers read without pixel data give the same note as the objects themselves."""
    seg, sr = results
    seg.save_as(tmp_path / "seg.dcm")
    sr.save_as(tmp_path / "sr.dcm")
    headers = [pydicom.dcmread(tmp_path / name, stop_before_pixels=True) for name in ("seg.dcm", "sr.dcm")]
    from_headers = build_rejection_note(headers)
    from_objects = build_rejection_note([seg, sr])
    assert from_headers.SOPInstanceUID == from_objects.SOPInstanceUID
    assert _evidence(from_headers) == _evidence(from_objects) == _expected(seg, sr)
    assert _content_refs(from_headers) == _content_refs(from_objects)


def test_uids_deterministic(results) -> None:
    seg, sr = results
    first = build_rejection_note([seg, sr])
    again = build_rejection_note([sr, seg, sr], instance_number=2)  # order, repeats: the same set
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert _evidence(again) == _expected(seg, sr)  # a repeated instance is listed once

    only_seg = build_rejection_note([seg])
    assert only_seg.SeriesInstanceUID == first.SeriesInstanceUID  # one series per study and reason
    assert only_seg.SOPInstanceUID != first.SOPInstanceUID

    safety = build_rejection_note([seg, sr], reason="patient-safety")
    assert safety.SeriesInstanceUID != first.SeriesInstanceUID
    assert safety.SOPInstanceUID != first.SOPInstanceUID

    described = build_rejection_note([seg, sr], description="re-run")
    assert described.SOPInstanceUID != first.SOPInstanceUID  # other content, other UID

    uids = {first.SOPInstanceUID, first.SeriesInstanceUID}
    assert not uids & {seg.SOPInstanceUID, sr.SOPInstanceUID, seg.SeriesInstanceUID, sr.SeriesInstanceUID}
    assert all(len(u) <= 64 for u in uids)


@pytest.mark.parametrize("reason, code", [
    ("quality", "113001"), ("patient-safety", "113037"), ("worklist", "113038"), ("retention", "113039"),
])
def test_reason_titles(results, reason: str, code: str) -> None:
    seg, _ = results
    note = build_rejection_note([seg], reason=reason)
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == (code, "DCM")
    assert title.CodeMeaning == REJECTION_TITLES[reason].meaning
    assert note.SeriesDescription.startswith("AI results withdrawn (")


def test_mixed_study_raises(results) -> None:
    seg, sr = results
    other = Dataset()
    for keyword in ("PatientID", "PatientName", "SOPClassUID", "SeriesInstanceUID"):
        setattr(other, keyword, sr.get(keyword))
    other.SOPInstanceUID = generate_uid()
    other.StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="one study"):
        build_rejection_note([seg, other])


def test_invalid_input_raises(results) -> None:
    seg, _ = results
    with pytest.raises(ValueError, match="at least one"):
        build_rejection_note([])
    with pytest.raises(ValueError, match="unknown rejection reason"):
        build_rejection_note([seg], reason="superseded")
    no_uid = Dataset()
    no_uid.StudyInstanceUID = seg.StudyInstanceUID
    no_uid.SeriesInstanceUID = seg.SeriesInstanceUID
    no_uid.SOPClassUID = seg.SOPClassUID
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        build_rejection_note([seg, no_uid])


def test_manifest_identity(results, manifest: ModelManifest) -> None:
    seg, sr = results
    note = build_rejection_note([seg, sr], manifest=manifest, device_serial_number="NODE1")
    assert note.ManufacturerModelName == seg.ManufacturerModelName == manifest.name
    assert note.SoftwareVersions == seg.SoftwareVersions
    assert note.DeviceUID == seg.DeviceUID
    assert note.DeviceSerialNumber == "NODE1"
    assert "BodyPartExamined" not in note
    purposes = {tuple(p.PurposeOfReferenceCodeSequence[0][k].value for k in
                      ("CodeValue", "CodingSchemeDesignator", "CodeMeaning"))
                for p in note.ContributingEquipmentSequence}
    assert PROCESSING_ALGORITHM in purposes
    # identity does not change what is rejected or the UIDs
    plain = build_rejection_note([seg, sr])
    assert note.SOPInstanceUID == plain.SOPInstanceUID
    assert _evidence(note) == _evidence(plain)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed")
@pytest.mark.parametrize("with_manifest", [False, True])
def test_dciodvfy(tmp_path: Path, results, small_volume, manifest, with_manifest: bool) -> None:
    seg, sr = results
    note = build_rejection_note([seg, sr], description="Replaced by a newer run",
                                manifest=manifest if with_manifest else None)
    note.save_as(tmp_path / "kos.dcm")
    errors, warnings = peers.dciodvfy(tmp_path / "kos.dcm")
    print(f"\nkos.dcm: errors {errors}; warnings {warnings}")
    assert errors == []
    _, source_warnings = peers.dciodvfy(small_volume.paths[0])
    assert INHERITED_WARNINGS <= {w.strip() for w in source_warnings}  # the source has them too
    allowed = INHERITED_WARNINGS | (IDENTITY_WARNINGS if with_manifest else set())
    assert {w.strip() for w in warnings} <= allowed


@pytest.mark.integration
def test_orthanc_stores_note(tmp_path: Path, results, dcmtk, orthanc) -> None:
    """The results and then their rejection note reach a real archive. Orthanc does not act on
    IOCM notes, so it keeps all three; the note it returns has the title and references sent."""
    seg, sr = results
    note = build_rejection_note([seg, sr])
    paths = []
    for name, obj in (("seg.dcm", seg), ("sr.dcm", sr), ("kos.dcm", note)):
        obj.save_as(tmp_path / name)
        paths.append(tmp_path / name)
    for path in paths:  # the results first, then the note that withdraws them
        sent = peers.storescu("127.0.0.1", orthanc.dicom_port, path, aec=orthanc.aet, required_only=True)
        assert sent.returncode == 0, sent.stdout + sent.stderr

    stored = {i["sop_instance_uid"]: i for i in orthanc.instances_of_study(str(seg.StudyInstanceUID))}
    assert set(stored) == {str(seg.SOPInstanceUID), str(sr.SOPInstanceUID), str(note.SOPInstanceUID)}
    kos = stored[str(note.SOPInstanceUID)]
    assert kos["sop_class_uid"] == KOS_SOP_CLASS
    assert kos["series_instance_uid"] == str(note.SeriesInstanceUID)

    back = pydicom.dcmread(orthanc.download_instance(kos["id"], tmp_path / "back.dcm"))
    assert back.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert _evidence(back) == _expected(seg, sr)

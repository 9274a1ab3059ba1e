"""IHE AI Results identity of every SEG and SR, read back with highdicom: the Processing
Algorithm item of the Contributing Equipment Sequence, General Equipment naming the model, the
model's Device UID (changed by retraining), Content Creator's Name, Body Part Examined and
Procedure Reported from the source."""

from __future__ import annotations

import copy

import highdicom as hd
import peers
import pytest

import dicom_ai
from dicom_ai.report.seg import build_seg
from dicom_ai.report.sr import build_sr

from .conftest import make_manifest, sub_volume

SHA_A, SHA_B = "a" * 64, "b" * 64


def _source(volume, body_part: str | None = "CHEST", procedure: tuple[str, str, str] | None = None):
    """Five source slices whose headers carry ``body_part`` and ``procedure`` (copies)."""
    part = sub_volume(volume, 120, 125)
    headers = [copy.deepcopy(ds) for ds in part.datasets]  # headers only; a shallow copy shares elements
    for ds in headers:
        if body_part is None:
            ds.pop("BodyPartExamined", None)
        else:
            ds.BodyPartExamined = body_part
        if procedure is not None:
            item = hd.sr.CodedConcept(*procedure)
            ds.ProcedureCodeSequence = [item]
    part.datasets = headers
    return part


def _write_and_read(tmp_path, volume, mask, manifest):
    seg = build_seg(volume, mask, manifest, device_serial_number="DICOMAI")
    sr = build_sr(volume, mask, seg, manifest, device_serial_number="DICOMAI")
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    return hd.seg.segread(tmp_path / "seg.dcm"), hd.sr.srread(tmp_path / "sr.dcm")


def _algorithm_item(obj):
    items = [i for i in obj.ContributingEquipmentSequence
             if i.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"]
    assert len(items) == 1
    return items[0]


def test_seg_and_sr_name_the_algorithm(tmp_path, lidc_volume, lidc_mask) -> None:
    volume = _source(lidc_volume)
    manifest = make_manifest(name="dicom-ai-lung", version="2.0.0", sha256=SHA_A)
    seg, sr = _write_and_read(tmp_path, volume, lidc_mask[120:125], manifest)
    versions = f"2.0.0 / dicom-ai {dicom_ai.__version__}"
    for obj in (seg, sr):
        item = _algorithm_item(obj)
        code = item.PurposeOfReferenceCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == \
            ("Newcode1", "99IHE", "Processing Algorithm")
        assert (item.Manufacturer, item.ManufacturerModelName, item.SoftwareVersions) == \
            ("dicom-ai", "dicom-ai-lung", versions)
        # General Equipment says the same
        assert (obj.Manufacturer, obj.ManufacturerModelName, obj.SoftwareVersions) == \
            ("dicom-ai", "dicom-ai-lung", versions)
        assert obj.DeviceUID == item.DeviceUID
        assert obj.DeviceSerialNumber == "DICOMAI"
        # highdicom's own items stay: the acquisition equipment first, highdicom before ours
        assert len(obj.ContributingEquipmentSequence) == 3
    assert _algorithm_item(seg).DeviceUID == _algorithm_item(sr).DeviceUID
    assert str(seg.ContentCreatorName) == "dicom-ai-lung^"
    assert seg.BodyPartExamined == "CHEST"
    assert "BodyPartExamined" not in sr  # not an attribute of the SR IODs
    observer = {i.ConceptNameCodeSequence[0].CodeValue: i for i in sr.ContentSequence
                if i.RelationshipType == "HAS OBS CONTEXT"}
    assert observer["121012"].UID == _algorithm_item(sr).DeviceUID  # Device Observer UID
    assert observer["121013"].TextValue == "dicom-ai-lung"  # Device Observer Name
    assert observer["121015"].TextValue == "dicom-ai-lung"  # Device Observer Model Name
    assert observer["121016"].TextValue == "DICOMAI"  # Device Observer Serial Number


def test_retrained_weights_change_the_device_uid(tmp_path, lidc_volume, lidc_mask) -> None:
    volume, mask = _source(lidc_volume), lidc_mask[120:125]
    uids = []
    for i, sha in enumerate((SHA_A, SHA_A, SHA_B)):
        (tmp_path / str(i)).mkdir()
        seg, sr = _write_and_read(tmp_path / str(i), volume, mask, make_manifest(version="2.0.0", sha256=sha))
        uids.append(_algorithm_item(seg).DeviceUID)
    assert uids[0] == uids[1] != uids[2]


def _procedure(sr) -> list[tuple[str, str, str]]:
    return [(i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator,
             i.ConceptCodeSequence[0].CodeMeaning)
            for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"]


@pytest.mark.parametrize(("procedure", "region", "expected"), [
    # the source study's own code wins over the model's region
    (("RPID145", "RADLEX", "CT Chest Abdomen Pelvis"), "CHEST", ("RPID145", "RADLEX", "CT Chest Abdomen Pelvis")),
    (None, "CHEST", ("24627-2", "LN", "CT Chest")),
    (None, "ABDOMEN", ("25045-6", "LN", "CT unspecified body region")),
])
def test_procedure_reported_comes_from_the_source(tmp_path, lidc_volume, lidc_mask, procedure, region,
                                                  expected) -> None:
    volume = _source(lidc_volume, procedure=procedure)
    _, sr = _write_and_read(tmp_path, volume, lidc_mask[120:125], make_manifest(body_region=region))
    assert _procedure(sr) == [expected]


def test_no_body_part_in_the_source_none_in_the_seg(tmp_path, lidc_volume, lidc_mask) -> None:
    seg, _ = _write_and_read(tmp_path, _source(lidc_volume, body_part=None), lidc_mask[120:125], make_manifest())
    assert "BodyPartExamined" not in seg


#: What dciodvfy (Debian 12's dicom3tools, 2022-06) says about the identity beyond what the
#: source itself gets: it does not know Device UID in the Contributing Equipment Sequence.
IDENTITY_WARNINGS = {
    "Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class",
}


@pytest.mark.integration
def test_dciodvfy_on_the_identity(tmp_path, lidc_volume, lidc_mask) -> None:
    volume = _source(lidc_volume, procedure=("RPID145", "RADLEX", "CT Chest Abdomen Pelvis"))
    _write_and_read(tmp_path, volume, lidc_mask[120:125], make_manifest(sha256=SHA_A))
    _, source_warnings = peers.dciodvfy(volume.paths[0])
    for name in ("seg.dcm", "sr.dcm"):
        errors, warnings = peers.dciodvfy(tmp_path / name)
        assert errors == [], (name, errors)
        assert set(warnings) - set(source_warnings) <= IDENTITY_WARNINGS, (name, warnings)

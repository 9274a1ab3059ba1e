"""IHE IOCM rejection note: a Key Object Selection Document that withdraws earlier AI results.

When a newer run replaces a result (SEG, SR, Secondary Capture), the objects sent before must be
withdrawn from the PACS. IHE Radiology Imaging Object Change Management (IOCM; RAD TF-1 Chapter
37, transaction RAD-66 "Rejection Note Stored") does this with a *rejection note*: a Key Object
Selection (KOS) Document whose Document Title is a rejection code and which lists the rejected
instances. An Image Manager / Archive that supports IOCM then hides (or deletes) them.

The object (PS3.3 A.35.4 Key Object Selection Document IOD):

* Patient and General Study modules copied from the rejected objects: the note is in the same
  Study as the instances it rejects (IOCM: one note per study), in a series of its own
  (Modality ``KO``).
* Key Object Document module (PS3.3 C.17.6.2): Current Requested Procedure Evidence Sequence
  listing every rejected instance by Study / Series / SOP Class / SOP Instance UID.
* SR Document Content (PS3.3 C.17.3) with template TID 2010 "Key Object Selection" (PS3.16): the
  root CONTAINER is named by the Document Title from CID 7010 "Key Object Selection Document
  Title", then an optional TEXT (113012, DCM, "Key Object Description"), then one reference per
  rejected instance: IMAGE for objects with Rows and Columns (SEG, Secondary Capture), COMPOSITE
  for the others (SR), each named (260753009, SCT, "Source").

Document Title: an AI result superseded by a re-run is withdrawn with (113001, DCM, "Rejected
for Quality Reasons"), the IOCM title for instances their creator withdraws because they are
wrong and replaced by corrected ones (RAD TF-1 Chapter 37, the quality rejection use case; the
other titles are for patient safety, worklist selection errors and retention expiry, none of
which describes a re-run). The other CID 7010 titles IOCM
uses are available through ``reason``: (113037, DCM, "Rejected for Patient Safety Reasons"),
(113038, DCM, "Incorrect Modality Worklist Entry") and (113039, DCM, "Data Retention Policy
Expired"). No Document Title Modifier from CID 7011 "Rejected for Quality Reasons" is written:
its reasons (artifacts, exposure, positioning, equipment failures) do not describe a result
superseded by a newer run, and the modifier is optional in TID 2010.

UIDs: Series and SOP Instance UIDs are derived (PS3.5 Annex B, as in
:mod:`dicom_ai.report.uids`) so that building the note again for the same rejected set and
reason yields the same note, which the archive then replaces instead of adding a duplicate.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_ROOT_UID, UID

import dicom_ai
from dicom_ai.package.manifest import ModelManifest
from dicom_ai.report import uids
from dicom_ai.report.identity import MANUFACTURER, PATIENT_STUDY, PATIENT_STUDY_TYPE2, apply_identity

#: Document Title (CID 7010) of each ``reason`` of :func:`build_rejection_note` (IHE RAD IOCM).
REJECTION_TITLES: dict[str, Code] = {
    "quality": codes.DCM.RejectedForQualityReasons,  # (113001, DCM)
    "patient-safety": codes.DCM.RejectedForPatientSafetyReasons,  # (113037, DCM)
    "worklist": codes.DCM.IncorrectModalityWorklistEntry,  # (113038, DCM)
    "retention": codes.DCM.DataRetentionPolicyExpired,  # (113039, DCM)
}

#: Words of the Series Description for each reason.
_REASON_TEXT = {
    "quality": "superseded",
    "patient-safety": "patient safety",
    "worklist": "wrong worklist entry",
    "retention": "retention expired",
}

#: Bump only if the derivation itself changes; every UID of a rejection note changes with it.
_SCHEME = "dicom-ai/rejection-note-uid/1"

_LO_MAX = 64  # LO value length, PS3.5 Table 6.2-1
#: Manufacturer's Model Name (0008,1090) of a note written without a model: the node itself.
NODE_MODEL_NAME = "dicom-ai"

#: Attributes of each rejected object that its reference needs.
_REFERENCE = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


def _derive(parts: list[str], prefix: str) -> UID:
    return uids.derive(_SCHEME, parts, prefix)


def rejection_note_series_uid(
    study_instance_uid: str, reason: str = "quality", *, prefix: str = PYDICOM_ROOT_UID
) -> UID:
    """Series Instance UID of the rejection notes of one study and reason (PS3.3 C.7.3.1).

    All notes this node writes into a study for one reason share this series.

    Parameters
    ----------
    study_instance_uid: str
        Study Instance UID of the rejected objects (and of the note).
    reason: str, optional
        A key of :data:`REJECTION_TITLES`.
    prefix: str, optional
        UID root (at most 54 characters, ending in ``"."``); defaults to pydicom's root.

    Returns
    -------
    pydicom.uid.UID
    """
    return _derive(["series", str(study_instance_uid), _check_reason(reason)], prefix)


def rejection_note_instance_uid(
    study_instance_uid: str,
    rejected_sop_instance_uids: Sequence[str],
    reason: str = "quality",
    *,
    description: str | None = None,
    prefix: str = PYDICOM_ROOT_UID,
) -> UID:
    """SOP Instance UID of the rejection note of a set of instances (PS3.3 C.12.1).

    Parameters
    ----------
    study_instance_uid: str
        Study Instance UID of the rejected objects.
    rejected_sop_instance_uids: Sequence[str]
        SOP Instance UIDs of the rejected objects; order and repetitions do not matter.
    reason: str, optional
        A key of :data:`REJECTION_TITLES`.
    description: str | None, optional
        The Key Object Description of the note: a note with another text is another object, so
        it gets another UID (one SOP Instance UID never names two different objects).
    prefix: str, optional
        UID root; defaults to pydicom's root.

    Returns
    -------
    pydicom.uid.UID
        The same UID for the same study, set of instances, reason and description.

    Raises
    ------
    ValueError
        If ``rejected_sop_instance_uids`` is empty or ``reason`` is unknown.
    """
    instances = sorted({str(uid) for uid in rejected_sop_instance_uids})
    if not instances:
        raise ValueError("rejected_sop_instance_uids must not be empty")
    parts = ["instance", str(study_instance_uid), _check_reason(reason)]
    if description is not None:
        parts.append(f"description={description}")
    return _derive([*parts, *instances], prefix)


def _check_reason(reason: str) -> str:
    key = reason.strip().lower()
    if key not in REJECTION_TITLES:
        raise ValueError(f"unknown rejection reason {reason!r}; expected one of {sorted(REJECTION_TITLES)}")
    return key


def _header(ds: Dataset, index: int) -> Dataset:
    """The attributes of a rejected object the note needs, in a new data set (no pixel data).

    Rows and Columns are kept: highdicom references objects that have them as IMAGE, the others
    as COMPOSITE (PS3.3 C.18.4 / C.18.3; TID 2010 allows both).
    """
    for keyword in _REFERENCE:
        if not ds.get(keyword):
            raise ValueError(f"rejected object {index} has no {keyword}")
    out = Dataset()
    for keyword in ("SpecificCharacterSet", *PATIENT_STUDY, *_REFERENCE, "Rows", "Columns"):
        if keyword in ds:
            out[keyword] = ds[keyword]
    # highdicom reads these type 2 attributes unconditionally; absent means empty (unknown).
    for keyword in PATIENT_STUDY_TYPE2:
        if keyword not in out:
            setattr(out, keyword, None)
    return out


def _check_one_study(headers: list[Dataset]) -> str:
    studies = {str(ds.StudyInstanceUID) for ds in headers}
    if len(studies) != 1:
        raise ValueError(
            "a rejection note rejects instances of one study only (IHE IOCM); "
            f"got {len(studies)} studies: {sorted(studies)}"
        )
    patients = {str(ds.get("PatientID") or "") for ds in headers}
    if len(patients) != 1:
        raise ValueError(f"the rejected objects of one study name {len(patients)} Patient IDs")
    return studies.pop()


def series_description(reason: str = "quality") -> str:
    """Series Description of a rejection note, like ``"AI results withdrawn (superseded)"``."""
    return f"AI results withdrawn ({_REASON_TEXT[_check_reason(reason)]})"[:_LO_MAX]


def build_rejection_note(
    rejected: Sequence[Dataset],
    *,
    reason: str = "quality",
    series_number: int = 999,
    instance_number: int = 1,
    device_serial_number: str | None = None,
    description: str | None = None,
    manifest: ModelManifest | None = None,
) -> hd.ko.KeyObjectSelectionDocument:
    """Build the IOCM rejection note (a KOS) that withdraws ``rejected`` from the archive.

    PS3.3 A.35.4 Key Object Selection Document IOD, C.17.6 Key Object Document module; PS3.16
    TID 2010 Key Object Selection with a Document Title of CID 7010; IHE RAD IOCM (RAD-66
    Rejection Note Stored).

    Parameters
    ----------
    rejected: Sequence[pydicom.dataset.Dataset]
        Headers (pixel data not needed; highdicom objects or files read with
        ``stop_before_pixels``) of the objects to withdraw, all of one study. Each needs SOP
        Class, SOP Instance, Series and Study Instance UIDs; the patient and study attributes
        are copied from the first. Repeated instances are listed once.
    reason: str, optional
        Why they are withdrawn, which selects the Document Title: ``"quality"`` (113001, DCM,
        "Rejected for Quality Reasons"), the title for a result superseded by a re-run;
        ``"patient-safety"`` (113037), ``"worklist"`` (113038) or ``"retention"`` (113039).
    series_number: int, optional
        Series Number (0020,0011) of the note's series.
    instance_number: int, optional
        Instance Number (0020,0013).
    device_serial_number: str | None, optional
        Device Serial Number (0018,1000); the host name of this node by default.
    description: str | None, optional
        Key Object Description (113012, DCM) TEXT item, e.g. why the results were withdrawn;
        none by default.
    manifest: dicom_ai.package.manifest.ModelManifest | None, optional
        The model whose results are withdrawn. When given, the note carries the same identity
        as that model's SEG and SR (:func:`dicom_ai.report.identity.apply_identity`: Processing
        Algorithm item of the Contributing Equipment Sequence, Manufacturer's Model Name,
        Software Versions, Device UID); otherwise it names the node (Manufacturer and Model
        Name ``"dicom-ai"``, Software Versions the node's version).

    Returns
    -------
    highdicom.ko.KeyObjectSelectionDocument
        The note, in the study of the rejected objects, with Series and SOP Instance UIDs from
        :func:`rejection_note_series_uid` and :func:`rejection_note_instance_uid`.

    Raises
    ------
    ValueError
        If ``rejected`` is empty, spans more than one study (or Patient ID), an object lacks a
        UID, or ``reason`` is unknown.
    """
    key = _check_reason(reason)
    if not rejected:
        raise ValueError("rejected must list at least one object")
    headers: list[Dataset] = []
    seen: set[str] = set()
    for i, ds in enumerate(rejected):
        header = _header(ds, i)
        if str(header.SOPInstanceUID) not in seen:
            seen.add(str(header.SOPInstanceUID))
            headers.append(header)
    study_uid = _check_one_study(headers)
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTION_TITLES[key],
        referenced_objects=headers,
        description=description,
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=headers,
        content=content,
        series_instance_uid=rejection_note_series_uid(study_uid, key),
        series_number=series_number,
        sop_instance_uid=rejection_note_instance_uid(
            study_uid, sorted(seen), key, description=description
        ),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=NODE_MODEL_NAME,
        software_versions=dicom_ai.__version__,
        device_serial_number=(device_serial_number or socket.gethostname() or "unknown")[:_LO_MAX],
        series_description=series_description(key),
    )
    # Patient module: copied whole from the rejected objects (same patient as the study).
    if "IssuerOfPatientID" in headers[0]:
        note.IssuerOfPatientID = headers[0].IssuerOfPatientID
    if manifest is not None:
        # The KOS IOD has no General Series Module attribute Body Part Examined (PS3.3 A.35.4).
        apply_identity(note, manifest, headers[0], body_part=False)
    return note

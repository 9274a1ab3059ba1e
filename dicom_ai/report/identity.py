"""Who made a result object: the identity of the node and of the model, the same on every
object this node writes (SEG, SR, Secondary Capture, Key Object Selection).

IHE Radiology AI Results (AIR) asks that an AI result name the algorithm that produced it:

* an item of the Contributing Equipment Sequence (0018,A001) (PS3.3 C.12.1 SOP Common Module)
  with Purpose of Reference Code Sequence (0040,A170) = (Newcode1, 99IHE, "Processing
  Algorithm"), Manufacturer, Manufacturer's Model Name = the model's name, Software Versions =
  ``"<model version> / dicom-ai <node version>"`` and Device UID (0018,1002) derived from the
  weights' SHA-256 (:func:`dicom_ai.report.uids.model_device_uid`), so that retraining changes it;
* the General Equipment Module (PS3.3 C.7.5.1) saying the same: Manufacturer's Model Name, Software
  Versions and Device UID of the model; Device Serial Number the node (its AE title);
* the SR's device observer (PS3.16 TID 1004) with that Device UID and name (:mod:`dicom_ai.report.sr`).

The Device UID in the Contributing Equipment item is what AIR asks for; dicom3tools' dciodvfy
of Debian 12 (release 2022-06) does not list it in that sequence and therefore calls the
objects a Standard Extended SOP Class (a warning, not an error). Device UID in the General
Equipment Module is standard there.

Body Part Examined (0018,0015) of the source series is copied into the result series of image
IODs whose General Series Module has it (SEG, SC; PS3.3 C.7.3.1); SR documents have no such
attribute (PS3.3 C.17.1 SR Document Series Module).
"""

from __future__ import annotations

from typing import TypeVar

import pydicom
from pydicom.dataset import Dataset

import dicom_ai
from dicom_ai.package.manifest import ModelManifest
from dicom_ai.report import uids

#: Manufacturer (0008,0070) of every object this node writes.
MANUFACTURER = "dicom-ai"
#: Purpose of Reference of the algorithm's Contributing Equipment item (IHE RAD AIR; the
#: code is IHE's provisional one until DICOM assigns it).
PROCESSING_ALGORITHM = ("Newcode1", "99IHE", "Processing Algorithm")

_LO_MAX = 64  # LO value length, PS3.5 Table 6.2-1

#: Patient Module (PS3.3 C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2)
#: attributes a result copies from its source, so that it joins the source's patient and study.
PATIENT_STUDY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientIdentityRemoved", "DeidentificationMethod",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription", "PatientAge", "PatientSize", "PatientWeight",
)
#: The Type 2 ones among them: written empty when the source lacks them.
PATIENT_STUDY_TYPE2 = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"})

_D = TypeVar("_D", bound=Dataset)


def software_versions(manifest: ModelManifest) -> str:
    """Software Versions (0018,1020) of a result: ``"<model version> / dicom-ai <node version>"``
    (LO, at most 64 characters)."""
    return f"{manifest.version} / dicom-ai {dicom_ai.__version__}"[:_LO_MAX]


def model_device_uid(manifest: ModelManifest) -> str:
    """Device UID of the model (:func:`dicom_ai.report.uids.model_device_uid`)."""
    return str(uids.model_device_uid(manifest.name, manifest.version, manifest.sha256))


def processing_algorithm_item(manifest: ModelManifest) -> Dataset:
    """The Contributing Equipment Sequence item of the model (IHE RAD AIR; PS3.3 C.12.1).

    Returns
    -------
    pydicom.dataset.Dataset
        Purpose of Reference Code Sequence (Newcode1, 99IHE, "Processing Algorithm"),
        Manufacturer, Manufacturer's Model Name (the model's name), Software Versions
        (:func:`software_versions`), Device UID (:func:`model_device_uid`) and Contribution
        Description.
    """
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = PROCESSING_ALGORITHM
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = manifest.name[:_LO_MAX]
    item.SoftwareVersions = software_versions(manifest)
    item.DeviceUID = model_device_uid(manifest)
    item.ContributionDescription = f"AI model {manifest.name} {manifest.version}"[:_LO_MAX]
    return item


def apply_identity(obj: _D, manifest: ModelManifest, source: Dataset, *,
                   device_serial_number: str | None = None, body_part: bool = True) -> _D:
    """Write the model's identity into a result object built by highdicom (in place).

    Parameters
    ----------
    obj:
        The result (SEG, SR, SC, KOS). Its Contributing Equipment Sequence (if any: highdicom's
        acquisition and highdicom items) gains :func:`processing_algorithm_item`.
    manifest:
        The model.
    source:
        A header of the source series (Body Part Examined).
    device_serial_number:
        Device Serial Number (0018,1000) of the node; left as it is when None.
    body_part:
        Copy Body Part Examined from ``source`` when it has one (False for SR and KOS, whose
        IODs have no General Series Module).

    Returns
    -------
    pydicom.dataset.Dataset
        ``obj``.
    """
    items = list(obj.get("ContributingEquipmentSequence", []))
    obj.ContributingEquipmentSequence = pydicom.Sequence([*items, processing_algorithm_item(manifest)])
    obj.Manufacturer = MANUFACTURER
    obj.ManufacturerModelName = manifest.name[:_LO_MAX]
    obj.SoftwareVersions = software_versions(manifest)
    obj.DeviceUID = model_device_uid(manifest)
    if device_serial_number is not None:
        obj.DeviceSerialNumber = device_serial_number[:_LO_MAX]
    part = str(source.get("BodyPartExamined", "") or "").strip()
    if body_part and part:
        obj.BodyPartExamined = part[:16]
    return obj

"""TID 1500 Measurement Report (Comprehensive 3D SR) of a model's segmentation, with highdicom.

Structure (PS3.16 TID 1500 Measurement Report):

* Observation context (TID 1001/1004): one *device* observer, this node: Device Observer UID,
  Name ``"dicom-ai"``, Manufacturer ``"dicom-ai"``, Model Name ``"<model name> <model version>"``.
* Procedure reported: from the manifest's modality and body region (CID 100, e.g.
  (24627-2, LN, "CT Chest")).
* One TID 1411 *Volumetric ROI Measurements* group per SEG segment:

  - Tracking Identifier and Tracking UID (TID 4108), the same UID as the SEG segment's
    Tracking UID;
  - Referenced Segment (121214, DCM): SEG SOP Class/Instance UID, segment number, and the source
    series (Source series for segmentation, 121232 DCM);
  - Finding Category / Finding (121071, DCM) = the label's Segmented Property Category / Type;
    Finding Site (363698007, SCT) = the label's type when it is an anatomical structure;
  - Algorithm identification (TID 4019): model name and version;
  - Measurements (TID 1419): Volume (118565006, SCT) in mL (UCUM ``ml``); for CT, Mean
    (373098007, SCT) and Standard Deviation (386136009, SCT) of the segment's HU (UCUM
    ``[hnsf'U]``) as the concept names, not Attenuation Coefficient (112031, DCM) with one of
    them as its derivation: viewers that list measurements by name and drop the derivation
    (OHIF) would show two rows of the same name. An empty segment gets its volume (0 mL) only.
  - When the result is implausible (:mod:`dicom_ai.report.plausibility`: a volume or volume
    ratio outside the manifest's range, or every label empty), each group the reason concerns
    gets a CONTAINS TEXT item (121106, DCM, "Comment") = ``"Implausible result: <reason>"``,
    one per reason, after the measurements: a qualitative evaluation with a text value (TID
    1411's qualitative evaluation rows take a coded name with a CODE or a TEXT value, like TID
    1501 row 12; TID 1411 is extensible besides). No coded value is used, for want of a
    standard code that means "implausible output": (263654008, SCT, "Abnormal") of CID 222
    "Normality Codes" would state a clinical abnormality, and (114009, DCM, "Value out of
    range") of CID 42 is a Numeric Value Qualifier that changes how the NUM's value itself is
    read.

* One TID 1410 *Planar ROI Measurements* group per non-empty segment, on the source slice where
  the segment is largest, so that viewers can place the finding on an image: the outline of
  the segment's largest 4-connected part there (:mod:`dicom_ai.report.outline`) as Image Region
  (SCOORD POLYLINE) and as the coordinates its first NUM, the Area (mm2), is INFERRED FROM;
  then Mean and Standard Deviation (373098007 and 386136009, SCT, as the concept names) of its
  HU for CT. Its Tracking Identifier is :data:`PLANAR_TRACKING_IDENTIFIER`, the text OHIF's
  Cornerstone reader takes for a closed outline; the Tracking UID is the segment's own
  derivation for ``region="largest-slice"``, and finding and algorithm are the segment's.
* Image Library (TID 1600): the slices those outlines lie on, with their descriptors.

Evidence (Current Requested Procedure Evidence Sequence, PS3.3 C.17.2): the source images and
the SEG; patient and study are copied from the source, so the SR joins the source study.
"""

from __future__ import annotations

import io
import math
import socket
import time

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid

from dicom_ai.cache.states import ResultKind
from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import Label, ModelManifest
from dicom_ai.report import uids
from dicom_ai.report.codes import ANATOMIC_CATEGORIES
from dicom_ai.report.identity import MANUFACTURER, apply_identity, model_device_uid, software_versions
from dicom_ai.report.measure import LabelMeasurement, measure_labels
from dicom_ai.report.outline import largest_cross_section
from dicom_ai.report.plausibility import PlausibilityIssue, check_plausibility, reasons_by_label
from dicom_ai.report.seg import build_seg, series_description, to_code

#: (118565006, SCT, "Volume").
VOLUME = codes.SCT.Volume
#: UCUM ``ml``.
UNIT_ML = hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter")
#: UCUM ``[hnsf'U]``.
UNIT_HU = codes.UCUM.HounsfieldUnit
#: (373098007, SCT, "Mean") and (386136009, SCT, "Standard Deviation") (CID 7464): the concept
#: names of the HU statistics, each distinct without a derivation.
MEAN = codes.SCT.Mean
STANDARD_DEVIATION = codes.SCT.StandardDeviation

#: (121106, DCM, "Comment"): concept name of the TEXT item that says why a result is implausible.
COMMENT = codes.DCM.Comment
#: Start of that item's text.
IMPLAUSIBLE_PREFIX = "Implausible result: "

#: Segmented property categories for which the type is also an anatomic location (finding site):
#: Anatomical Structure (old and new SNOMED CT concept ids) and Body Substance.
_ANATOMIC_CATEGORIES = {(c.scheme_designator, c.value) for c in ANATOMIC_CATEGORIES}  # 123037004, 91723000, 91720002

_LO_MAX = 64


#: Procedure Reported by modality when neither the source nor the manifest names a region
#: with a code here (CID 100 "Quantitative Diagnostic Imaging Procedures").
_UNSPECIFIED_REGION = {
    "CT": codes.LN.CTUnspecifiedBodyRegion,
    "MR": codes.LN.MRIUnspecifiedBodyRegion,
    "PT": codes.LN.PETUnspecifiedBodyRegion,
    "NM": codes.LN.NMUnspecifiedBodyRegion,
}


def procedure_reported(source: pydicom.Dataset, manifest: ModelManifest) -> list[hd.sr.CodedConcept]:
    """Procedure Reported (121058, DCM) of the TID 1500 report (PS3.16 TID 1500 row 3, CID 100).

    1. The source study's own procedure: the items of its Procedure Code Sequence (0008,1032)
       (PS3.3 C.7.2.1 General Study Module), as the site coded it.
    2. Otherwise from the modality and the manifest's body region: (24627-2, LN, "CT Chest")
       for CT of the chest; else the modality's "unspecified body region" LOINC code, or
       (363679005, SCT, "Imaging procedure").

    Parameters
    ----------
    source:
        A header of the source series.
    manifest:
        The model (``modality``, ``body_region``).
    """
    coded = []
    for item in source.get("ProcedureCodeSequence", []):
        value = str(item.get("CodeValue", "") or item.get("LongCodeValue", "") or item.get("URNCodeValue", ""))
        scheme, meaning = str(item.get("CodingSchemeDesignator", "")), str(item.get("CodeMeaning", ""))
        if value and scheme and meaning:
            coded.append(hd.sr.CodedConcept(value, scheme, meaning[:_LO_MAX]))
    if coded:
        return coded
    modality = str(source.get("Modality", "") or manifest.modality).upper()
    if modality == "CT" and manifest.body_region.upper() == "CHEST":
        return [hd.sr.CodedConcept("24627-2", "LN", "CT Chest")]
    code = _UNSPECIFIED_REGION.get(modality, codes.SCT.ImagingProcedure)
    return [hd.sr.CodedConcept.from_code(code)]


def observation_context(manifest: ModelManifest, device_uid: str | None = None,
                        serial_number: str | None = None) -> hd.sr.ObservationContext:
    """Observation context with the model as the device observer (PS3.16 TID 1001, TID 1004).

    Parameters
    ----------
    manifest: dicom_ai.package.manifest.ModelManifest
        The model: Device Observer Name and Model Name are its name.
    device_uid: str | None
        Device Observer UID (121012, DCM); by default the model's Device UID
        (:func:`dicom_ai.report.identity.model_device_uid`), the one in the Contributing
        Equipment Sequence.
    serial_number: str | None
        Device Observer Serial Number (121015, DCM): the node running the model (its AE title).

    Returns
    -------
    highdicom.sr.ObservationContext
    """
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_uid or model_device_uid(manifest),
                name=manifest.name[:_LO_MAX],
                manufacturer_name=MANUFACTURER,
                model_name=manifest.name[:_LO_MAX],
                serial_number=serial_number[:_LO_MAX] if serial_number else None,
            ),
        )
    )


def _finding_sites(label: Label) -> list[hd.sr.FindingSite] | None:
    if (label.category.scheme, label.category.value) in _ANATOMIC_CATEGORIES:
        return [hd.sr.FindingSite(anatomic_location=to_code(label.type))]
    return None


def _measurements(
    m: LabelMeasurement, algorithm: hd.sr.AlgorithmIdentification, is_ct: bool
) -> list[hd.sr.Measurement]:
    out = [
        hd.sr.Measurement(
            name=VOLUME, value=float(m.volume_ml), unit=UNIT_ML, algorithm_id=algorithm
        )
    ]
    if is_ct and not m.is_empty and math.isfinite(m.mean):
        out += [
            hd.sr.Measurement(name=name, value=float(value), unit=UNIT_HU, algorithm_id=algorithm)
            for value, name in ((m.mean, MEAN), (m.std, STANDARD_DEVIATION))
        ]
    return out


def algorithm_of(manifest: ModelManifest, precision: str = "float32") -> hd.sr.AlgorithmIdentification:
    """Algorithm identification (PS3.16 TID 4019) of the model: its name and version, and
    when the network ran in a precision other than float32
    (:attr:`dicom_ai.infer.runtime.LoadedModel.precision`) the Algorithm Parameter
    ``precision=<dtype>``."""
    return hd.sr.AlgorithmIdentification(
        name=manifest.algorithm_name[:_LO_MAX], version=manifest.version[:_LO_MAX],
        parameters=None if precision == "float32" else [f"precision={precision}"],
    )


def _segment_numbers(seg: hd.seg.Segmentation, manifest: ModelManifest) -> dict[int, int]:
    """Map ``Label.value`` -> SEG Segment Number, matching by Tracking UID (then by label)."""
    series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    by_tracking = {
        str(item.get("TrackingUID", "")): int(item.SegmentNumber) for item in seg.SegmentSequence
    }
    by_label = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    numbers: dict[int, int] = {}
    for label in manifest.labels:
        tuid = uids.tracking_uid(series_uid, manifest.name, manifest.version, label.value)
        number = by_tracking.get(str(tuid), by_label.get(label.name[:_LO_MAX]))
        if number is None:
            raise ValueError(f"the SEG has no segment for label {label.value} ({label.name})")
        numbers[label.value] = number
    return numbers


def build_sr(
    volume: Volume,
    mask: np.ndarray,
    seg: hd.seg.Segmentation,
    manifest: ModelManifest,
    *,
    series_number: int = 902,
    instance_number: int = 1,
    device_serial_number: str | None = None,
    measurements: dict[int, LabelMeasurement] | None = None,
    plausibility: list[PlausibilityIssue] | None = None,
    precision: str = "float32",
) -> hd.sr.Comprehensive3DSR:
    """Build a TID 1500 Measurement Report with one volumetric group per SEG segment.

    PS3.3 A.35.13 Comprehensive 3D SR IOD; PS3.16 TID 1500, TID 1411, TID 1419.

    Parameters
    ----------
    volume: dicom_ai.infer.volume.Volume
        Source volume: ``array`` (slices, rows, columns) in HU for CT, ``spacing`` in mm,
        ``datasets`` the source headers (evidence, patient and study).
    mask: numpy.ndarray
        uint8 label mask (slices, rows, columns) on the grid of ``volume``, the one the SEG was
        built from.
    seg: highdicom.seg.Segmentation
        The SEG built by :func:`dicom_ai.report.seg.build_seg` from the same mask.
    manifest: dicom_ai.package.manifest.ModelManifest
        The model: labels, codes, name and version.
    series_number: int, optional
        Series Number (0020,0011) of the SR series.
    instance_number: int, optional
        Instance Number (0020,0013).
    device_serial_number: str | None, optional
        The node running the model (its AE title): Device Observer Serial Number and Device
        Serial Number; the host name by default. The observer itself is the model
        (:func:`observation_context`).
    measurements: dict[int, LabelMeasurement] | None, optional
        The result of :func:`dicom_ai.report.measure.measure_labels` for this volume and mask,
        when the caller has it already; computed here otherwise.
    plausibility: list[PlausibilityIssue] | None, optional
        The result of :func:`dicom_ai.report.plausibility.check_plausibility` for these
        measurements, when the caller has it already; computed here otherwise. Each issue's
        reason is written as a Comment in the groups of the labels it concerns.
    precision: str, optional
        The precision the network ran in (:attr:`dicom_ai.infer.runtime.LoadedModel.precision`):
        other than ``"float32"`` it is an Algorithm Parameter ``precision=<dtype>`` of each
        group's algorithm identification (TID 4019) and in the SOP Instance UID's ``variant``
        (:func:`dicom_ai.report.uids.variant_of`).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Completion flag COMPLETE, verification UNVERIFIED; Series and SOP Instance UIDs from
        :mod:`dicom_ai.report.uids` (kind ``"SR"``).

    Raises
    ------
    ValueError
        If the mask does not fit the volume or manifest (see
        :func:`dicom_ai.report.measure.check_mask`), or the SEG lacks a segment of a label.
    """
    source = volume.datasets
    if not source:
        raise ValueError("volume.datasets is empty: the SR needs the source headers as evidence")
    series_uid = str(source[0].SeriesInstanceUID)
    if measurements is None:
        measurements = measure_labels(volume, mask, manifest)
    missing = [label.value for label in manifest.labels if label.value not in measurements]
    if missing:
        raise ValueError(f"measurements lack labels {missing}")
    numbers = _segment_numbers(seg, manifest)
    if plausibility is None:
        plausibility = check_plausibility(measurements, manifest)
    reasons = reasons_by_label(plausibility)
    is_ct = str(source[0].get("Modality", manifest.modality)).upper() == "CT"
    algorithm = algorithm_of(manifest, precision)

    groups, planars = [], []
    for label in manifest.labels:
        m = measurements[label.value]
        tracking = hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(series_uid, manifest.name, manifest.version, label.value),
            identifier=f"{label.name} ({manifest.name} {manifest.version})"[:_LO_MAX],
        )
        referenced_segment = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=numbers[label.value],
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
        )
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=referenced_segment,
            finding_category=to_code(label.category),
            finding_type=to_code(label.type),
            finding_sites=_finding_sites(label),
            algorithm_id=algorithm,
            measurements=_measurements(m, algorithm, is_ct),
        )
        for reason in reasons.get(label.value, []):
            group[0].ContentSequence.append(
                hd.sr.TextContentItem(
                    name=COMMENT,
                    value=IMPLAUSIBLE_PREFIX + reason,
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
            )
        groups.append(group)
        planar = _planar_group(volume, mask, label, manifest, series_uid, algorithm, is_ct)
        if planar is not None:
            planars.append(planar)

    # the Image Library (TID 1600) describes the images the spatial coordinates lie on
    on = {str(image.SOPInstanceUID) for _, image in planars}
    library = [ds for ds in source if str(ds.SOPInstanceUID) in on]
    return _measurement_report_sr(source, [seg], groups + [g for g, _ in planars], manifest, "measurements",
                                  series_number=series_number, instance_number=instance_number,
                                  device_serial_number=device_serial_number, image_library=library,
                                  precision=precision)


#: Tracking Identifier text of the largest-slice groups. Viewers built on Cornerstone (OHIF 3,
#: through @cornerstonejs/adapters) turn a TID 1500 measurement group into a measurement on an
#: image only when its Tracking Identifier names one of their tools; a closed polyline is their
#: PlanarFreehandROI tool, which shows the first NUM as the area and the NUMs named "Mean" and
#: "Standard Deviation". The group's Tracking UID and finding say which segment it is.
PLANAR_TRACKING_IDENTIFIER = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
#: (42798000, SCT, "Area"), UCUM ``mm2``.
AREA = codes.SCT.Area
UNIT_MM2 = hd.sr.CodedConcept(value="mm2", scheme_designator="UCUM", meaning="square millimeter")


def _planar_group(volume: Volume, mask: np.ndarray, label: Label, manifest: ModelManifest, series_uid: str,
                  algorithm: hd.sr.AlgorithmIdentification, is_ct: bool):
    """The TID 1410 Planar ROI group of a label on its largest cross-section
    (:func:`dicom_ai.report.outline.largest_cross_section`) and the source header of that
    slice, or None for an empty label.

    The outline is the group's Image Region (SCOORD POLYLINE, 111030 DCM) on that source image
    and also the INFERRED FROM coordinates of its first NUM, the Area (mm2) of the segment's
    pixels inside the outline (holes in the segment, e.g. vessels, are not counted; PS3.16 TID
    300 row 8, where viewers look for a measurement's place); then, for CT, the Mean and the
    Standard Deviation (373098007 and 386136009, SCT) of those pixels' HU, named so that each
    is distinct without its derivation."""
    cut = largest_cross_section(mask, label.value)
    if cut is None:
        return None
    ds = volume.datasets[cut.slice_index]
    row_mm, col_mm = (float(x) for x in ds.PixelSpacing)
    source_image = hd.sr.SourceImageForRegion(referenced_sop_class_uid=str(ds.SOPClassUID),
                                              referenced_sop_instance_uid=str(ds.SOPInstanceUID))
    measurements = [hd.sr.Measurement(name=AREA, value=round(float(cut.region.sum()) * row_mm * col_mm, 2),
                                      unit=UNIT_MM2, algorithm_id=algorithm)]
    if is_ct:
        values = volume.array[cut.slice_index][cut.region].astype(np.float64)
        measurements += [
            hd.sr.Measurement(name=MEAN, value=round(float(values.mean()), 1), unit=UNIT_HU, algorithm_id=algorithm),
            hd.sr.Measurement(name=STANDARD_DEVIATION, value=round(float(values.std()), 1), unit=UNIT_HU,
                              algorithm_id=algorithm),
        ]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(series_uid, manifest.name, manifest.version, label.value, region="largest-slice"),
            identifier=PLANAR_TRACKING_IDENTIFIER,
        ),
        referenced_region=hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                            graphic_data=cut.points, source_image=source_image),
        finding_category=to_code(label.category),
        finding_type=to_code(label.type),
        finding_sites=_finding_sites(label),
        algorithm_id=algorithm,
        measurements=measurements,
    )
    area = next(item for item in group[0].ContentSequence if item.ValueType == "NUM")
    coordinates = hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                                  graphic_data=cut.points, source_image=source_image)
    area.ContentSequence = pydicom.Sequence([*area.get("ContentSequence", []), coordinates])
    return group, ds


def _measurement_report_sr(
    source: list, extra_evidence: list, groups: list, manifest: ModelManifest, kind: str, *,
    series_number: int, instance_number: int, device_serial_number: str | None, image_library: list | None = None,
    precision: str = "float32",
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR holding a TID 1500 report of ``groups`` about ``source``: the
    model as device observer, the procedure from :func:`procedure_reported`, the identity of
    :func:`dicom_ai.report.identity.apply_identity`, UIDs from :mod:`dicom_ai.report.uids`
    (the SOP Instance UID's ``variant`` names a ``precision`` other than float32)."""
    series_uid = str(source[0].SeriesInstanceUID)
    serial = (device_serial_number or socket.gethostname() or "unknown")[:_LO_MAX]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(manifest, serial_number=serial),
        procedure_reported=procedure_reported(source[0], manifest),
        imaging_measurements=groups,
        referenced_images=image_library or None,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source, *extra_evidence],
        content=report,
        series_instance_uid=uids.result_series_uid(series_uid, manifest.name, manifest.version, ResultKind.SR),
        series_number=series_number,
        sop_instance_uid=uids.result_instance_uid(
            series_uid, manifest.name, manifest.version, ResultKind.SR, (ds.SOPInstanceUID for ds in source),
            variant=uids.variant_of(precision=precision),
        ),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=series_description(manifest, kind),
        manufacturer_model_name=manifest.name[:_LO_MAX],
        software_versions=software_versions(manifest),
    )
    return apply_identity(sr, manifest, source[0], device_serial_number=serial, body_part=False)


#: Concept name of the class probability: (122157, DCM, "Probability"), unit UCUM ``1``.
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
UNIT_ONE = hd.sr.CodedConcept("1", "UCUM", "no units")


def build_classification_sr(
    volume: Volume,
    result,
    manifest: ModelManifest,
    *,
    series_number: int = 903,
    instance_number: int = 1,
    device_serial_number: str | None = None,
    precision: str = "float32",
) -> hd.sr.Comprehensive3DSR:
    """Build a TID 1500 Measurement Report with the class a classification model gave a series.

    PS3.3 A.35.13 Comprehensive 3D SR IOD; PS3.16 TID 1500 with one TID 1501 *Measurement and
    Qualitative Evaluation Group*:

    * Tracking Identifier / UID (TID 4108), stable over re-runs of the same model version;
    * Algorithm identification (TID 4019): model name and version;
    * Qualitative Evaluation: concept ``manifest.finding`` (e.g. (123014, DCM, "Target
      Region")), value the top class's code (e.g. (51185008, SCT, "Thoracic structure"));
    * Measurement: Probability (122157, DCM) of that class, unit UCUM ``1``, 0-1;
    * Source images for the group: every source image.

    Parameters
    ----------
    volume: dicom_ai.infer.volume.Volume
        The source volume; ``datasets`` are the source headers (evidence, patient and study).
    result: dicom_ai.infer.runtime.ClassResult
        The model's output for the volume.
    manifest: dicom_ai.package.manifest.ModelManifest
        The classification model (``finding``, ``classes``, name and version).
    precision: str, optional
        The precision the network ran in, as for :func:`build_sr`.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        Series and SOP Instance UIDs from :mod:`dicom_ai.report.uids` (kind ``"SR"``).

    Raises
    ------
    ValueError
        If the volume has no source headers or the manifest is not a classification model.
    """
    source = volume.datasets
    if not source:
        raise ValueError("volume.datasets is empty: the SR needs the source headers as evidence")
    if manifest.task != "classification" or manifest.finding is None:
        raise ValueError(f"{manifest.label} is not a classification model")
    series_uid = str(source[0].SeriesInstanceUID)
    algorithm = algorithm_of(manifest, precision)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uids.tracking_uid(series_uid, manifest.name, manifest.version, 0),
            identifier=f"{manifest.finding.meaning} ({manifest.name} {manifest.version})"[:_LO_MAX],
        ),
        algorithm_id=algorithm,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=to_code(manifest.finding), value=to_code(result.top.code))
        ],
        measurements=[
            hd.sr.Measurement(name=PROBABILITY, value=round(float(result.probability), 4), unit=UNIT_ONE,
                              algorithm_id=algorithm)
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in source],
    )
    return _measurement_report_sr(list(source), [], [group], manifest, "classification",
                                  series_number=series_number, instance_number=instance_number,
                                  device_serial_number=device_serial_number, precision=precision)


def _warm_up_source(slices: int = 2, size: int = 8) -> Volume:
    """A tiny synthetic CT series (``slices`` axial slices of ``size`` x ``size`` pixels, 1 mm
    grid) with the headers a SEG and an SR copy and reference (PS3.3 A.3 CT Image IOD:
    patient, study, series, frame of reference, image plane)."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    headers = []
    for k in range(slices):
        ds = pydicom.Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "WARM^UP", "WARMUP", "", ""
        ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study, "1", ""
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20000101", "000000", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, 1, k + 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(k)]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        headers.append(ds)
    return Volume(
        array=np.zeros((slices, size, size), dtype=np.float32), spacing=(1.0, 1.0, 1.0),
        origin=np.zeros(3), direction=np.eye(3), datasets=headers,
    )


def warm_up() -> float:
    """Build a SEG and an SR of a tiny synthetic series and encode both, once per process.

    What highdicom and pydicom do only at their first call is then done before the first job
    rather than in its ``report`` time: importing highdicom's SEG and SR modules, and parsing
    highdicom's tables of the standard (IODs, modules and attributes, PS3.3 and PS3.4; about
    22 MB of JSON, kept for the life of the process, about 110 MB). The parsing takes about
    0.25 s of CPU, and the million objects it creates set off full garbage collections, which
    in the worker (where torch, the models and the index keep some 470,000 objects alive) cost
    another 0.5 s.

    Returns
    -------
    float
        Seconds it took.

    Raises
    ------
    Exception
        Whatever highdicom or pydicom raise; the caller decides whether a failed warm-up matters.
    """
    t = time.perf_counter()
    volume = _warm_up_source()
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    mask[0, 2:4, 2:4] = 1
    manifest = ModelManifest.model_validate({
        "name": "warm-up", "version": "0", "spacing": (1.0, 1.0, 1.0), "window": (-1000.0, 400.0),
        "patch_size": (1, 8, 8), "network": {},
        "labels": [{"value": 1, "name": "Lung", "color": (0, 128, 255),
                    "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
                    "type": {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}}],
    })
    seg = build_seg(volume, mask, manifest, device_serial_number="WARMUP")
    sr = build_sr(volume, mask, seg, manifest, device_serial_number="WARMUP")
    for obj in (seg, sr):
        obj.save_as(io.BytesIO(), enforce_file_format=True)
    return time.perf_counter() - t

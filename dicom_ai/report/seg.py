"""DICOM Segmentation (SEG) of a model's label mask, with highdicom.

One BINARY segment per manifest label (PS3.3 A.51 Segmentation IOD; C.8.20.2 Segmentation
Image Module; C.8.20.4 Segment Description), each coded with the label's Segmented Property
Category and Type (SNOMED CT), algorithm type AUTOMATIC with the model as Segmentation Algorithm
Identification (C.8.20.2 / C.8.20.2.1 Algorithm Family CID 7162), a recommended display colour
(CIELab), and a Tracking UID shared with the SR measurement group of the segment.

Identity (IHE AI Results): :func:`dicom_ai.report.identity.apply_identity` (the Processing
Algorithm item of the Contributing Equipment Sequence, General Equipment naming the model, its
Device UID, Body Part Examined of the source); Content Creator's Name (0070,0084, type 2 of
C.10.9 Content Identification) is the model's name.

Geometry: frame ``i`` of the mask is written with the Plane Position (Patient), Plane
Orientation and Pixel Measures of ``volume.datasets[i]`` and references that instance in its
Derivation Image Sequence (C.7.6.16.2.6), so each frame lands exactly on its source slice.
"""

from __future__ import annotations

import re
import socket

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from dicom_ai.cache.states import ResultKind
from dicom_ai.infer.postprocess import nonzero_box
from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import Code, Label, ModelManifest
from dicom_ai.report import uids
from dicom_ai.report.identity import MANUFACTURER, apply_identity, software_versions
from dicom_ai.report.measure import check_mask

_LO_MAX = 64  # LO value length, PS3.5 Table 6.2-1
_CS_MAX = 16


def to_code(code: Code) -> hd.sr.CodedConcept:
    """Convert a manifest :class:`~dicom_ai.package.manifest.Code` to a highdicom coded concept.

    Parameters
    ----------
    code: dicom_ai.package.manifest.Code
        Code value, coding scheme designator and code meaning (PS3.3 Table 8.8-1).

    Returns
    -------
    highdicom.sr.CodedConcept
    """
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def algorithm_identification(manifest: ModelManifest, precision: str = "float32") -> hd.AlgorithmIdentificationSequence:
    """Segmentation Algorithm Identification Sequence of the model (PS3.3 C.8.20.4, C.17.3.1).

    Parameters
    ----------
    manifest: dicom_ai.package.manifest.ModelManifest
        The model; ``algorithm_name`` and ``version`` are recorded, the family is
        (123110, DCM, "Artificial Intelligence") from CID 7162, the source is this software.
    precision: str, optional
        The precision the network ran in (:attr:`dicom_ai.infer.runtime.LoadedModel.precision`);
        other than ``"float32"`` it is recorded as Algorithm Parameters (0066,0032)
        ``precision=<dtype>``.

    Returns
    -------
    highdicom.AlgorithmIdentificationSequence
    """
    return hd.AlgorithmIdentificationSequence(
        name=manifest.algorithm_name[:_LO_MAX],
        family=codes.cid7162.ArtificialIntelligence,
        version=manifest.version[:_LO_MAX],
        source=MANUFACTURER,
        parameters=None if precision == "float32" else {"precision": precision},
    )


def _topic(manifest: ModelManifest) -> str:
    """A short human word for what is segmented: 'Lung' for left lung + right lung; for a
    classification model, its finding ('Target Region')."""
    if manifest.task == "classification" and manifest.finding is not None:
        return manifest.finding.meaning.strip()
    meanings = [label.type.meaning.strip() for label in manifest.labels]
    if len(meanings) == 1:
        return meanings[0][:1].upper() + meanings[0][1:]
    last = {m.split()[-1].lower() for m in meanings if m}
    if len(last) == 1:
        word = last.pop()
        return word[:1].upper() + word[1:]
    return manifest.body_region.strip().title() or "Multi-label"


def series_description(manifest: ModelManifest, kind: str = "segmentation") -> str:
    """Series Description like ``"AI Lung segmentation (dicom-ai-lung 1.0.0)"``, at most 64 chars.

    Parameters
    ----------
    manifest: dicom_ai.package.manifest.ModelManifest
        The model.
    kind: str, optional
        What the series holds, e.g. ``"segmentation"`` or ``"measurements"``.

    Returns
    -------
    str
        The model name and version are kept whole; the topic is shortened to fit LO (64 chars).
    """
    tail = f" {kind} ({manifest.name} {manifest.version})"
    topic = _topic(manifest)
    room = _LO_MAX - len("AI ") - len(tail)
    if room < len(topic):
        topic = topic[: max(room, 0)].rstrip()
    text = f"AI {topic}{tail}" if topic else f"AI{tail}"
    return text[:_LO_MAX]


def content_label(manifest: ModelManifest) -> str:
    """Content Label (CS, PS3.3 C.10.9): upper-case letters, digits, underscore, at most 16."""
    text = re.sub(r"[^A-Z0-9_]+", "_", manifest.name.upper()).strip("_")
    return (text or "AI_SEGMENTATION")[:_CS_MAX].rstrip("_") or "AI_SEGMENTATION"


def segment_description(
    label: Label,
    segment_number: int,
    manifest: ModelManifest,
    tracking_uid: str,
    precision: str = "float32",
) -> hd.seg.SegmentDescription:
    """Segment Sequence item for one label (PS3.3 C.8.20.4).

    Parameters
    ----------
    label: dicom_ai.package.manifest.Label
        The label; ``name`` becomes the Segment Label, ``category`` and ``type`` the Segmented
        Property Category and Type Code Sequences, ``color`` the Recommended Display CIELab Value.
    segment_number: int
        Segment Number (1-based).
    manifest: dicom_ai.package.manifest.ModelManifest
        The model, for Segment Algorithm Name/Identification and the Segment Description.
    tracking_uid: str
        Tracking UID of the segment (shared with the SR measurement group).
    precision: str, optional
        The precision the network ran in (see :func:`algorithm_identification`).

    Returns
    -------
    highdicom.seg.SegmentDescription
    """
    desc = hd.seg.SegmentDescription(
        segment_number=segment_number,
        segment_label=label.name[:_LO_MAX],
        segmented_property_category=to_code(label.category),
        segmented_property_type=to_code(label.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(manifest, precision),
        tracking_uid=tracking_uid,
        tracking_id=f"{label.name} ({manifest.name} {manifest.version})"[:_LO_MAX],
        display_color=hd.color.CIELabColor.from_rgb(*label.color),
    )
    # Segment Description (0062,0006), type 3: name the algorithm and its version.
    desc.SegmentDescription = (
        f"{label.type.meaning}, automatic, {manifest.name} {manifest.version}"
    )[:_LO_MAX]
    return desc


def _to_segment_numbers(mask: np.ndarray, labels: list[Label]) -> np.ndarray:
    """Label values -> segment numbers 1..n (manifest order), same shape and dtype (uint8).

    The *label-map* style input of highdicom (one array, value = segment number) keeps memory
    at one byte per voxel whatever the number of labels; a stacked (slices, rows, columns,
    segments) array would need one byte per voxel *per label*. When every label's value is
    already its segment number the mask itself is returned (no copy); otherwise only the box
    of the labelled voxels is translated.
    """
    if all(label.value == number for number, label in enumerate(labels, start=1)):
        return mask
    lut = np.zeros(256, dtype=np.uint8)
    for number, label in enumerate(labels, start=1):
        lut[label.value] = number
    out = np.zeros_like(mask)
    box = nonzero_box(mask)
    if box is not None:
        out[box] = lut[mask[box]]
    return out


def _check_source(volume: Volume) -> None:
    if not volume.datasets:
        raise ValueError("volume.datasets is empty: the SEG must reference its source instances")
    if len(volume.datasets) != volume.array.shape[0]:
        raise ValueError(
            f"volume has {volume.array.shape[0]} slices but {len(volume.datasets)} source headers"
        )
    for i, ds in enumerate(volume.datasets):
        for keyword in ("SOPClassUID", "SOPInstanceUID", "ImagePositionPatient"):
            if not ds.get(keyword):
                raise ValueError(f"source header {i} has no {keyword}")


def build_seg(
    volume: Volume,
    mask: np.ndarray,
    manifest: ModelManifest,
    *,
    omit_empty_frames: bool = True,
    series_number: int = 901,
    instance_number: int = 1,
    device_serial_number: str | None = None,
    precision: str = "float32",
) -> hd.seg.Segmentation:
    """Build a BINARY DICOM Segmentation of ``mask`` on the source series of ``volume``.

    PS3.3 A.51 Segmentation IOD, C.8.20 Segmentation Modules. One segment per label of
    ``manifest.labels``, numbered 1.. in manifest order (also labels absent from the mask).

    Parameters
    ----------
    volume: dicom_ai.infer.volume.Volume
        Source volume; ``volume.datasets[i]`` is the header (pixel data not needed) of the
        single-frame instance that holds slice ``i`` of ``volume.array``.
    mask: numpy.ndarray
        uint8 label mask of shape (slices, rows, columns) on the grid of ``volume``; each
        non-zero value is a ``Label.value`` of the manifest.
    manifest: dicom_ai.package.manifest.ModelManifest
        The model that produced the mask: labels, codes, colours, name and version.
    omit_empty_frames: bool, optional
        Leave out frames without any segmented pixel (smaller object). Some viewers place the
        frames of a sparse SEG wrongly; pass ``False`` for such destinations.
    series_number: int, optional
        Series Number (0020,0011) of the SEG series.
    instance_number: int, optional
        Instance Number (0020,0013).
    device_serial_number: str | None, optional
        Device Serial Number (0018,1000); the host name of this node by default.
    precision: str, optional
        The precision the network ran in (:attr:`dicom_ai.infer.runtime.LoadedModel.precision`):
        other than ``"float32"`` it is in each segment's Algorithm Parameters (0066,0032) and
        in the SOP Instance UID's ``variant`` (:func:`dicom_ai.report.uids.variant_of`).

    Returns
    -------
    highdicom.seg.Segmentation
        The SEG, identified as the module text says, with Series and SOP Instance UIDs from
        :mod:`dicom_ai.report.uids` (kind
        ``"SEG"``; the SOP Instance UID also differs between ``omit_empty_frames`` True and
        False, the series is the same), study and patient copied from the source.

    Raises
    ------
    ValueError
        If the mask does not match the volume or the manifest, or the source headers lack the
        UIDs and geometry the SEG must reference.
    """
    mask = check_mask(volume, mask, manifest)
    _check_source(volume)
    source = volume.datasets
    series_uid = str(source[0].SeriesInstanceUID)
    labels = list(manifest.labels)
    descriptions = [
        segment_description(
            label,
            number,
            manifest,
            uids.tracking_uid(series_uid, manifest.name, manifest.version, label.value),
            precision,
        )
        for number, label in enumerate(labels, start=1)
    ]
    pixel_array = _to_segment_numbers(mask, labels)
    if omit_empty_frames and not pixel_array.any():
        # highdicom needs at least one frame: keep them all rather than fail on an empty result.
        omit_empty_frames = False
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.result_series_uid(
            series_uid, manifest.name, manifest.version, ResultKind.SEG
        ),
        series_number=series_number,
        sop_instance_uid=uids.result_instance_uid(
            series_uid,
            manifest.name,
            manifest.version,
            ResultKind.SEG,
            (ds.SOPInstanceUID for ds in source),
            # the two encodings differ in content, so they must not share a UID
            variant=uids.variant_of("" if omit_empty_frames else "all-frames", precision=precision),
        ),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=manifest.name[:_LO_MAX],
        software_versions=software_versions(manifest),
        device_serial_number=(device_serial_number or socket.gethostname() or "unknown")[:_LO_MAX],
        content_creator_name=manifest.name[:_LO_MAX - 1] + "^",  # one component: the family name
        content_description=f"AI segmentation by {manifest.name} {manifest.version}"[:_LO_MAX],
        content_label=content_label(manifest),
        omit_empty_frames=omit_empty_frames,
        series_description=series_description(manifest, "segmentation"),
    )
    return apply_identity(seg, manifest, source[0])

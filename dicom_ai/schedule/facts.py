"""What completion and routing need to know of an instance and of a series.

The receiver extracts :func:`instance_facts` from each data set as it arrives (they are kept on
the instance row); ``dicom-ai rules test`` extracts the same from files. :func:`summarize` turns a
series' instances into the :class:`SeriesFacts` that routing rules test.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Image Type (0008,0008) values marking a localizer / scout (PS3.3 C.8.16.1, C.7.6.1.1.2).
LOCALIZER_TYPES = ("LOCALIZER", "SCOUT", "SCANOGRAM")


def _floats(value: Any, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def geometry(iop: Any, ipp: Any) -> tuple[str, float | None]:
    """Orientation label and slice position of an image.

    Parameters
    ----------
    iop, ipp:
        Image Orientation (Patient) (0020,0037), 6 direction cosines, and Image Position
        (Patient) (0020,0032), mm (PS3.3 C.7.6.2.1.1).

    Returns
    -------
    (label, position)
        ``AXIAL``, ``CORONAL`` or ``SAGITTAL`` when the slice normal is within about 37 degrees
        of that patient axis (largest component >= 0.8), ``OBLIQUE`` otherwise, ``""`` without
        a usable orientation; and the position along the normal in mm (None without one).
    """
    cosines = _floats(iop, 6) if iop is not None else None
    if cosines is None:
        return "", None
    r, c = cosines[:3], cosines[3:]
    n = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
    norm = math.sqrt(sum(v * v for v in n))
    if norm < 1e-6:
        return "", None
    n = [v / norm for v in n]
    axis = max(range(3), key=lambda i: abs(n[i]))
    label = ("SAGITTAL", "CORONAL", "AXIAL")[axis] if abs(n[axis]) >= 0.8 else "OBLIQUE"
    position = _floats(ipp, 3) if ipp is not None else None
    return label, (sum(a * b for a, b in zip(n, position)) if position else None)


def image_type_text(ds: Any) -> str:
    """Image Type (0008,0008) of a data set, values ``\\``-joined and upper case ("" if absent
    or malformed; at most 64 characters, as the index keeps it)."""
    image_type = ds.get("ImageType")
    if isinstance(image_type, str):
        image_type = [image_type]
    try:
        return "\\".join(str(v).strip() for v in (image_type or [])).upper()[:64]
    except TypeError:
        return ""


def instance_facts(ds: Any) -> dict[str, Any]:
    """The per-instance facts of a pydicom data set (missing or malformed attributes give
    empty values, never an error): ``image_type``, ``orientation``, ``slice_position`` (mm),
    ``slice_thickness`` (mm) and ``expected_instances`` (Number of Series Related Instances
    (0020,1209), else Images in Acquisition (0020,1002))."""
    orientation, position = geometry(ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"))
    try:
        thickness = float(ds.get("SliceThickness")) if ds.get("SliceThickness") not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    expected = _int_or_none(ds.get("NumberOfSeriesRelatedInstances"))
    if expected is None:
        expected = _int_or_none(ds.get("ImagesInAcquisition"))
    return {
        "image_type": image_type_text(ds),
        "orientation": orientation,
        "slice_position": position,
        "slice_thickness": thickness if thickness is None or math.isfinite(thickness) else None,
        "expected_instances": expected if expected and expected > 0 else None,
    }


def is_localizer(image_type: str) -> bool:
    """True when an Image Type value (``\\``-joined) marks a localizer."""
    return any(v.strip() in LOCALIZER_TYPES for v in image_type.upper().split("\\"))


@dataclass(frozen=True)
class InstanceFacts:
    """One instance as completion and routing see it."""

    sop_class_uid: str
    instance_number: int | None
    image_type: str = ""
    orientation: str = ""
    slice_position: float | None = None
    slice_thickness: float | None = None
    association: str = ""


@dataclass(frozen=True)
class SeriesFacts:
    """A series as routing rules see it (images = instances of image SOP classes that are not
    localizers)."""

    series_uid: str
    study_uid: str
    modality: str
    body_part: str
    description: str
    calling_ae_title: str
    sop_class_uid: str  # the most common SOP class among the images
    orientation: str  # the most common orientation among the images
    slice_thickness: float | None  # mm, median over the images
    n_images: int
    n_localizers: int
    image_type: str  # the most common Image Type, localizers included


def summarize(
    instances: list[InstanceFacts],
    *,
    series_uid: str,
    study_uid: str,
    modality: str,
    body_part: str,
    description: str,
    calling_ae_title: str,
    image_sop_classes: set[str] | None = None,
) -> SeriesFacts:
    """Series facts from its instances (``image_sop_classes`` None: every instance is an image)."""
    all_images = [i for i in instances if image_sop_classes is None or i.sop_class_uid in image_sop_classes]
    localizers = [i for i in all_images if is_localizer(i.image_type)]
    images = [i for i in all_images if not is_localizer(i.image_type)]
    thicknesses = [i.slice_thickness for i in images if i.slice_thickness is not None]

    def most_common(values: list[str]) -> str:
        return Counter(values).most_common(1)[0][0] if values else ""

    return SeriesFacts(
        series_uid=series_uid,
        study_uid=study_uid,
        modality=modality.upper(),
        body_part=body_part.upper(),
        description=description,
        calling_ae_title=calling_ae_title,
        sop_class_uid=most_common([i.sop_class_uid for i in images]),
        orientation=most_common([i.orientation for i in images]),
        slice_thickness=statistics.median(thicknesses) if thicknesses else None,
        n_images=len(images),
        n_localizers=len(localizers),
        image_type=most_common([i.image_type for i in all_images]),
    )


def arrived_whole(instances: list[InstanceFacts], association: str, spacing_tolerance: float = 0.05) -> str | None:
    """None when a series looks whole after ``association`` was released, else why not.

    Whole means (issue 4): every instance came in that one association, the Instance Numbers
    are present and contiguous (no gap, no repeat), and the slice positions of the images
    (localizers aside) are evenly spaced (each step within ``spacing_tolerance`` of the median
    step, relative).
    """
    if not instances:
        return "no instances"
    others = {i.association for i in instances} - {association}
    if others:
        return f"instances from {len(others) + 1} associations"
    numbers = [i.instance_number for i in instances]
    if any(n is None for n in numbers):
        return "an instance has no Instance Number"
    numbers.sort()
    if len(set(numbers)) != len(numbers):
        return "repeated Instance Numbers"
    if numbers[-1] - numbers[0] + 1 != len(numbers):
        missing = numbers[-1] - numbers[0] + 1 - len(numbers)
        return f"Instance Numbers {numbers[0]}..{numbers[-1]} miss {missing}"
    stack = [i for i in instances if not is_localizer(i.image_type)]
    if len(stack) == 1:
        return None  # one image (e.g. a multi-frame object): nothing to space
    positions = sorted(i.slice_position for i in stack if i.slice_position is not None)
    if len(positions) != len(stack):
        return "an image has no Image Position / Orientation (Patient)"
    steps = [b - a for a, b in zip(positions, positions[1:])]
    step = statistics.median(steps)
    if step <= 1e-3:
        return "slices at the same position"
    uneven = [s for s in steps if abs(s - step) > spacing_tolerance * step]
    if uneven:
        return f"uneven slice spacing ({len(uneven)} of {len(steps)} steps differ from {step:.2f} mm)"
    return None


def facts_from_files(
    paths: list[Path], image_sop_classes: set[str] | None, calling_ae_title: str = ""
) -> list[SeriesFacts]:
    """The :class:`SeriesFacts` of each series among DICOM files (headers only are read; files
    that are not DICOM are skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, tuple[Any, list[InstanceFacts]]] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            continue
        f = instance_facts(ds)
        inst = InstanceFacts(
            sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
            instance_number=_int_or_none(ds.get("InstanceNumber")),
            image_type=f["image_type"],
            orientation=f["orientation"],
            slice_position=f["slice_position"],
            slice_thickness=f["slice_thickness"],
        )
        groups.setdefault(uid, (ds, []))[1].append(inst)
    return [
        summarize(
            instances,
            series_uid=uid,
            study_uid=str(first.get("StudyInstanceUID", "") or ""),
            modality=str(first.get("Modality", "") or ""),
            body_part=str(first.get("BodyPartExamined", "") or ""),
            description=str(first.get("SeriesDescription", "") or ""),
            calling_ae_title=calling_ae_title,
            image_sop_classes=image_sop_classes,
        )
        for uid, (first, instances) in groups.items()
    ]

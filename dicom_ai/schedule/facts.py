"""What completion and routing need to know of a series.

The receiver extracts :func:`dicom_ai.dicom.header.instance_facts` from each data set as it
arrives (they are kept on the instance row); ``dicom-ai rules test`` extracts the same from files
(:func:`facts_from_files`). :func:`summarize` turns a series' instances into the
:class:`SeriesFacts` that routing rules test; :func:`arrived_whole` says whether a series looks
whole once its association was released.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_ai.dicom.header import instance_facts, int_value, is_localizer


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

    Whole means: every instance came in that one association, the Instance Numbers
    are present and contiguous (no gap, no repeat), and the slice positions of the images
    (localizers aside) are evenly spaced (each step within ``spacing_tolerance`` of the median
    step, relative).
    """
    if not instances:
        return "no instances"
    others = {i.association for i in instances} - {association}
    if others:
        return f"instances from {len(others) + 1} associations"
    given = [i.instance_number for i in instances]
    if any(n is None for n in given):
        return "an instance has no Instance Number"
    numbers = sorted(n for n in given if n is not None)
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
    steps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
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
            instance_number=int_value(ds, "InstanceNumber"),
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

"""Attribute values of a DICOM header, read leniently, and the facts the index keeps.

Values come from pydicom data sets (received, or read from files without pixel data). A missing
or malformed value gives None or an empty string, never an error: the callers decide what a
missing value means.
"""

from __future__ import annotations

import math
from typing import Any

from dicom_ai.dicom.geometry import orientation_label, slice_normal

#: Image Type (0008,0008) values marking a localizer / scout (PS3.3 C.8.16.1, C.7.6.1.1.2).
LOCALIZER_TYPES = ("LOCALIZER", "SCOUT", "SCANOGRAM")


def int_value(ds: Any, keyword: str) -> int | None:
    """An IS (Integer String, PS3.5 6.2) attribute of a data set as an int.

    Parameters
    ----------
    ds:
        pydicom data set (or anything with ``get(keyword)``).
    keyword:
        DICOM keyword, e.g. ``"InstanceNumber"`` (0020,0013).

    Returns
    -------
    int or None
        None when the attribute is absent, empty or not an integer.
    """
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def float_values(value: Any, n: int) -> list[float] | None:
    """A multi-valued DS (Decimal String, PS3.5 6.2) value as ``n`` finite floats.

    Parameters
    ----------
    value:
        The attribute's value, e.g. Image Orientation (Patient) (0020,0037) (``n`` = 6), Image
        Position (Patient) (0020,0032) (3) or Pixel Spacing (0028,0030) (2); may be None.
    n:
        Number of values expected (VM).

    Returns
    -------
    list of float or None
        None when the value is absent, holds another number of values, or a value that is not a
        finite number.
    """
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


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


def is_localizer(image_type: str) -> bool:
    """True when an Image Type value (``\\``-joined) holds one of :data:`LOCALIZER_TYPES`."""
    return any(v.strip() in LOCALIZER_TYPES for v in image_type.upper().split("\\"))


def orientation_and_position(iop: Any, ipp: Any) -> tuple[str, float | None]:
    """Orientation label and slice position of an image.

    Parameters
    ----------
    iop, ipp:
        Image Orientation (Patient) (0020,0037), 6 direction cosines, and Image Position
        (Patient) (0020,0032), mm (PS3.3 C.7.6.2.1.1); either may be None or malformed.

    Returns
    -------
    (label, position)
        :func:`dicom_ai.dicom.geometry.orientation_label` of the slice normal (``""`` without a
        usable orientation), and the projection of the position on the normal in mm (None
        without both).
    """
    cosines = float_values(iop, 6)
    normal = slice_normal(cosines) if cosines is not None else None
    if normal is None:
        return "", None
    position = float_values(ipp, 3)
    return orientation_label(normal), (float(normal @ position) if position else None)


def instance_facts(ds: Any) -> dict[str, Any]:
    """The per-instance facts of a pydicom data set (missing or malformed attributes give
    empty values, never an error): ``image_type``, ``orientation``, ``slice_position`` (mm),
    ``slice_thickness`` (mm) and ``expected_instances`` (Number of Series Related Instances
    (0020,1209), else Images in Acquisition (0020,1002))."""
    orientation, position = orientation_and_position(ds.get("ImageOrientationPatient"),
                                                     ds.get("ImagePositionPatient"))
    try:
        thickness = float(ds.get("SliceThickness")) if ds.get("SliceThickness") not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    expected = int_value(ds, "NumberOfSeriesRelatedInstances")
    if expected is None:
        expected = int_value(ds, "ImagesInAcquisition")
    return {
        "image_type": image_type_text(ds),
        "orientation": orientation,
        "slice_position": position,
        "slice_thickness": thickness if thickness is None or math.isfinite(thickness) else None,
        "expected_instances": expected if expected and expected > 0 else None,
    }

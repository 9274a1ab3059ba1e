"""Attribute values of a DICOM header, read leniently, and the facts the index keeps.

Values come from pydicom data sets (received, or read from files without pixel data). A missing
or malformed value gives None or an empty string, never an error: the callers decide what a
missing value means.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement

from dicom_ai.dicom.geometry import orientation_label, slice_normal

#: Image Type (0008,0008) values marking a localizer / scout (PS3.3 C.8.16.1, C.7.6.1.1.2).
LOCALIZER_TYPES = ("LOCALIZER", "SCOUT", "SCANOGRAM")


#: VRs :func:`text_value` reads from the encoded bytes: their single values all decode to the
#: bytes' ASCII text less trailing spaces and NULs (PS3.5 6.2: the padding of an odd-length value)
_PLAIN_VRS = frozenset({"AE", "CS", "DA", "LO", "PN", "SH", "UI"})
_IS_VR, _DS_VR = frozenset({"IS"}), frozenset({"DS"})  # the number VRs read the same way
#: Specific Character Set (0008,0005) values whose repertoire holds ASCII unchanged (PS3.3
#: C.12.1.1.2; the default repertoire, Latin-1, UTF-8); an absent or empty one is the default
_ASCII_SUPERSETS = frozenset({b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"})
_SPECIFIC_CHARACTER_SET = 0x00080005
#: one IS and one DS value as PS3.5 6.2 writes them (leading and trailing spaces allowed)
_IS = re.compile(r" *[+-]?[0-9]+ *")
_DS = re.compile(r" *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *")


@cache
def _tag(keyword: str) -> int | None:
    tag = tag_for_keyword(keyword)
    return None if tag is None else int(tag)


def _raw_ascii(ds: Any, keyword: str, vrs: frozenset[str]) -> str | None:
    """The value of ``keyword`` as ASCII text less its trailing padding (spaces and NULs, PS3.5
    6.2), read from the encoded bytes, when the element is still raw (as read), of a VR in
    ``vrs``, and ASCII; else None (the caller asks pydicom)."""
    tag = _tag(keyword)
    if tag is None or not hasattr(ds, "_dict"):
        return None
    elem = ds._dict.get(tag)
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and elem.value.isascii():
        if (elem.VR or dictionary_VR(tag)) in vrs:
            return elem.value.decode("ascii").rstrip("\0 ")
    return None


def text_value(ds: Any, keyword: str) -> str:
    """A single-valued string attribute of a pydicom data set as pydicom gives it (``str`` of
    its value; ``""`` when absent or empty), without pydicom's conversion where the result is
    known to be the same: an element still raw (as read), of a VR in :data:`_PLAIN_VRS`, whose
    value is ASCII without a ``\\`` (one value) in a character set of
    :data:`_ASCII_SUPERSETS`. Anything else goes through pydicom (``ds.get(keyword)``).

    Raises
    ------
    KeyError
        If ``keyword`` is not a DICOM keyword.
    """
    if _tag(keyword) is None:
        raise KeyError(f"no DICOM keyword {keyword!r}")
    text = _raw_ascii(ds, keyword, _PLAIN_VRS)
    if text is not None and "\\" not in text and _ascii_charset(ds):
        return text
    value = ds.get(keyword, "")
    return str(value if value is not None else "")


def _numbers(ds: Any, keyword: str) -> Any:
    """A DS (Decimal String) attribute's values as floats read from the encoded bytes (see
    :func:`_raw_ascii`) when each is a number; else pydicom's value (or None)."""
    text = _raw_ascii(ds, keyword, _DS_VR)
    if text is not None:
        values = text.split("\\")
        if all(_DS.fullmatch(v) for v in values):
            return [float(v) for v in values]
    return ds.get(keyword)


def _ascii_charset(ds: Any) -> bool:
    """True when the data set's Specific Character Set is absent or one of
    :data:`_ASCII_SUPERSETS` (read from its encoded bytes when still raw)."""
    elem = ds._dict.get(_SPECIFIC_CHARACTER_SET)
    if elem is None:
        return True
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        return elem.value.strip(b" \0") in _ASCII_SUPERSETS
    value = elem.value
    return isinstance(value, str) and value.strip().encode("ascii", "replace") in _ASCII_SUPERSETS


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
    text = _raw_ascii(ds, keyword, _IS_VR)
    if text is not None and (not text.strip() or _IS.fullmatch(text)):
        return int(text) if text.strip() else None  # else pydicom decides (e.g. "2.0")
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
    orientation, position = orientation_and_position(_numbers(ds, "ImageOrientationPatient"),
                                                     _numbers(ds, "ImagePositionPatient"))
    value = _numbers(ds, "SliceThickness")
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    try:
        thickness = float(value) if value not in (None, "") else None
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

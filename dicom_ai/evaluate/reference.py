"""Reference segmentations on a source volume's grid, for scoring a model against them.

``dicom-ai models test MODEL SERIES --reference REF`` reads a reference segmentation made by
another tool or a reader and compares the model's label mask with it, Dice per label. Three
formats are read (:func:`read_reference` tells them apart):

* **DICOM Segmentation** (SEG, PS3.3 C.8.20 Segmentation Image Module, A.51): BINARY,
  FRACTIONAL (thresholded at :data:`FRACTION_THRESHOLD`) and LABELMAP, decoded and stacked per
  segment by highdicom (:meth:`highdicom.seg.Segmentation.get_volume`). Each plane is put on
  the slice nearest to its Image Position (Patient) along the slice normal (PS3.3
  C.7.6.16.2.3); the source images the frames reference (Derivation Image Sequence > Source
  Image Sequence, PS3.3 C.7.6.16.2.6) must include a slice of the series.
* **RT Structure Set** (RTSTRUCT, PS3.3 C.8.8.5 Structure Set Module, C.8.8.6 ROI Contour
  Module): CLOSED_PLANAR contours are rasterized onto the slice whose plane they lie in.
* **NIfTI label map** (``.nii`` / ``.nii.gz``, RAS affine): sampled onto the volume's grid
  nearest-neighbour by :func:`sample_label_map`. Value -> label: the
  ``mapping`` (``"10,11=1"``) when one is given, else the values that are manifest label values.

SEG segment / RTSTRUCT ROI -> manifest label, the first rule that applies (:class:`_Matcher`):

1. the ``mapping`` (the CLI's ``--map``), by Segment Label or Segment Number, ROI Name or ROI
   Number; a label it targets gets nothing by the other rules;
2. SEG only: the segment's SNOMED CT code is a label's Segmented Property Type code
   (:func:`segment_code`: SNOMED RT ``SRT`` codes are translated to ``SCT`` first, e.g. T-62000
   -> 10200004; a paired organ with a laterality modifier, "Lung" + "Left", is "Left lung");
3. the name as clinics write it (:func:`match_clinic_name`): a name that reads as an AAPM
   TG-263 standard name (``Lung_L``, ``Lung-Left``, ``LUNG_LT``; :data:`TG263_SNOMED`) goes to
   the label of that SNOMED CT code; else a name whose structure words and side (left / l / lt
   / sin, right / r / rt / dx; split on ``-``, ``_``, spaces and camelCase, any case) equal
   those of one label's name or type code meaning (``Left Lung``, ``lung left``, ``LeftLung``
   for "Left lung"). Never across sides (``Lung-Left`` is not "Right lung"), never both organs
   (``Lungs``, ``Lung_Total``), target volumes (``GTV-1``, ``Lung-GTV``) or TG-263 ``z``
   helper structures (``zLung_L``);
4. the Segment Label / ROI Name equal to the label name (case-insensitive; ``GTV_Mass`` for a
   label named so).

The rest is listed in ``Reference.unmatched``; when nothing matches,
:meth:`Reference.no_match_message` says so with the names found.

All masks are uint8 arrays of shape (slices, rows, columns) in the order of
:class:`dicom_ai.infer.volume.Volume` (slices sorted along the slice normal), holding manifest
label values and 0 elsewhere.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pack_bits
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import Label
from dicom_ai.report.codes import LATERALITY, SIDES, STRUCTURES, sct_value

if TYPE_CHECKING:
    import highdicom as hd

logger = logging.getLogger(__name__)

#: FRACTIONAL SEG: a pixel belongs to the segment when value / Maximum Fractional Value >= this.
FRACTION_THRESHOLD = 0.5
#: Tolerance on direction cosines between the reference's planes and the volume's.
ORIENTATION_TOLERANCE = 1e-3
#: A SEG frame's first pixel must fall this close (in pixels) to a pixel centre of the volume.
IN_PLANE_TOLERANCE_PX = 0.1
#: Relative tolerance on Pixel Spacing between SEG frames and the volume.
PIXEL_SPACING_TOLERANCE_REL = 1e-3

SEG_LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
#: Referenced Segment Number (0062,000B), the dimension index of a BINARY / FRACTIONAL SEG's segments.
_SEGMENT_NUMBER = Tag(0x0062, 0x000B)
_CLOSED_TYPES = ("CLOSED_PLANAR", "CLOSED_PLANAR_XOR")


@dataclass
class Reference:
    """A reference segmentation on a volume's grid.

    Attributes
    ----------
    mask:
        uint8, shape (slices, rows, columns) of the volume; manifest label values, 0 elsewhere.
    matched:
        Manifest label value -> the reference's segment label(s) / ROI name(s) / label map
        value(s) it was made of (comma-separated when several). A label listed here is
        annotated by the reference, even when its mask is empty on this volume.
    unmatched:
        Segments / ROIs / label map values that matched no manifest label (ignored).
    kind:
        ``"SEG"``, ``"RTSTRUCT"`` or ``"NIFTI"``.
    notes:
        What was skipped and why (frames or contours off the volume, open contours, ``mapping``
        entries that matched nothing), for the user.
    source:
        The reference's file name (for messages).
    labels:
        The manifest labels it was matched against.
    """

    mask: np.ndarray
    matched: dict[int, str]
    unmatched: list[str]
    kind: str
    notes: list[str] = field(default_factory=list)
    source: str = ""
    labels: list[Label] = field(default_factory=list, repr=False)

    def no_match_message(self) -> str | None:
        """None when a part of the reference matched a label; else why nothing can be scored,
        with the label names and the names (values) found in the reference, e.g. ``no ROI of
        1-1.dcm matches a label of the model (labels: 1=Left lung, 2=Right lung); ROIs found:
        Lung-L, Lung-R; map them with --map NAME=LABEL``."""
        if self.matched:
            return None
        part = {"SEG": "segment", "RTSTRUCT": "ROI", "NIFTI": "label map value"}.get(self.kind, "part")
        known = ", ".join(f"{lab.value}={lab.name}" for lab in self.labels) or "none"
        found = ", ".join(self.unmatched) or "none"
        example = "VALUE=LABEL (e.g. 10,11=1)" if self.kind == "NIFTI" else "NAME=LABEL"
        return (
            f"no {part} of {self.source or 'the reference'} matches a label of the model (labels: {known}); "
            f"{part}s found: {found}; map them with --map {example}"
        )


# --- label matching ----------------------------------------------------------------------


def _norm(text: object) -> str:
    """Case- and whitespace-insensitive form of a name."""
    return " ".join(str(text).split()).casefold()


def _resolve_label(text: str, labels: list[Label]) -> int:
    """Manifest label value named by ``text``: a label value (``"1"``) or a label name."""
    text = text.strip()
    values = {lab.value for lab in labels}
    if text.lstrip("-").isdigit():
        if int(text) in values:
            return int(text)
    else:
        for lab in labels:
            if _norm(lab.name) == _norm(text):
                return lab.value
    known = ", ".join(f"{lab.value}={lab.name}" for lab in labels) or "none"
    raise ValueError(f"{text!r} is not a label of the model (labels: {known})")


def parse_mapping(items: list[str], labels: list[Label]) -> dict[str, int]:
    """Parse the CLI's ``--map`` items into a reference name -> label value mapping.

    Each item is ``REFERENCE=LABEL``. ``LABEL`` is a manifest label value (``1``) or name
    (``Left lung``, case-insensitive). ``REFERENCE`` is a SEG Segment Label or Segment Number,
    an RTSTRUCT ROI Name or ROI Number, or NIfTI label map values; a comma-separated list of
    integers (``10,11=1``) gives several values at once. A name is taken whole, commas
    included (``Neoplasm, Secondary=1``); repeat ``--map`` to map several names to one label.

    Returns
    -------
    dict
        Reference name or value (as written, stripped) -> manifest label value.

    Raises
    ------
    ValueError
        If an item has no ``=`` or an empty side, names a label the model does not have, or
        maps one reference name to two different labels.
    """
    out: dict[str, int] = {}
    for item in items:
        lhs, sep, rhs = str(item).rpartition("=")
        if not sep or not lhs.strip() or not rhs.strip():
            raise ValueError(
                f"--map {item!r}: expected REFERENCE=LABEL, e.g. GTV_Mass=1, 10,11=1 or 'Liver=Left lung'"
            )
        value = _resolve_label(rhs, labels)
        parts = [p.strip() for p in lhs.split(",")]
        keys = parts if len(parts) > 1 and all(p.lstrip("-").isdigit() for p in parts) else [lhs.strip()]
        for key in keys:
            norm = _norm(key)
            clash = [k for k, v in out.items() if _norm(k) == norm and v != value]
            if clash:
                raise ValueError(f"--map: {key!r} is mapped to both label {out[clash[0]]} and {value}")
            out[key] = value
    return out


# --- clinic names (RTSTRUCT ROI Names, SEG Segment Labels) ------------------------------

LEFT, RIGHT, BOTH = "left", "right", "both"

#: Name tokens that state a side: left / l / lt / sin / sinister, right / r / rt / dx / dexter.
LATERALITY_TOKENS: dict[str, str] = {
    "left": LEFT, "l": LEFT, "lt": LEFT, "sin": LEFT, "sinister": LEFT, "sinistra": LEFT,
    "right": RIGHT, "r": RIGHT, "rt": RIGHT, "dx": RIGHT, "dexter": RIGHT, "dextra": RIGHT,
}
#: Words of SNOMED CT code meanings that name no structure ("Structure of left lung").
_FILLER_TOKENS = frozenset({"structure", "of", "the"})
#: A token that starts like this names a target volume (GTV-1, PTVp, Lung-GTV, IGTV), no organ.
_TARGET_VOLUME_PREFIXES = ("gtv", "ctv", "ptv", "itv", "igtv")

#: AAPM TG-263 standard structure names (Mayo et al., "American Association of Physicists in
#: Medicine Task Group 263: Standardizing Nomenclatures in Radiation Oncology", Med Phys 2018)
#: -> SNOMED CT concept, for common organs. Names are compared as :func:`clinic_key` reads
#: them, so ``Lung_L``, ``Lung-Left``, ``LUNG_LT`` and ``Left Lung`` are all ``Lung_L``.
#: ``Lungs`` / ``Kidneys`` are both organs together (their own concepts): never one side.
TG263_SNOMED: dict[str, str] = {
    tg263: STRUCTURES[name].value
    for tg263, name in {
        "Lung_L": "left lung", "Lung_R": "right lung", "Lungs": "both lungs", "Heart": "heart", "Liver": "liver",
        "Spleen": "spleen", "Kidney_L": "left kidney", "Kidney_R": "right kidney", "Kidneys": "both kidneys",
        "Esophagus": "esophagus", "SpinalCord": "spinal cord", "Breast_L": "left breast", "Breast_R": "right breast",
    }.items()
}

#: SNOMED CT laterality qualifier (CID 244; SNOMED RT G-A101 / G-A100 / G-A102 translate to them) -> side.
_LATERALITY_CODES: dict[str, str] = {LATERALITY[side].value: side for side in (LEFT, RIGHT, BOTH)}
#: (paired organ, laterality) -> the SNOMED CT concept of that side, for SEG segments coded as
#: the organ plus a laterality modifier (PS3.3 C.8.20.2: Segmented Property Type Modifier Code
#: Sequence, or the Anatomic Region Modifier Sequence of the same structure).
_LATERAL_CODES: dict[tuple[str, str], str] = {
    (STRUCTURES[organ].value, side): STRUCTURES[name].value for (organ, side), name in SIDES.items()
}

#: A clinic name read as (structure tokens, sorted; laterality or None).
ClinicKey = tuple[tuple[str, ...], str | None]


def _name_tokens(text: str) -> list[str]:
    """Lower-case words of a name: split on anything but letters and digits (``-``, ``_``,
    spaces, dots) and on camelCase (``LeftLung`` -> left, lung; ``SpinalCord`` -> spinal, cord;
    an all-capitals run stays one word: ``LUNG_LT`` -> lung, lt)."""
    out: list[str] = []
    for word in re.split(r"[\W_]+", str(text)):
        word = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", word)
        out.extend(w.casefold() for w in word.split())
    return out


def clinic_key(name: str) -> ClinicKey | None:
    """The structure and side a clinic name gives, or None when it names no single organ.

    Rule: the name is split into words (:func:`_name_tokens`); the words in
    :data:`LATERALITY_TOKENS` give its side (``Lung_L``, ``LUNG_LT``, ``Left Lung``,
    ``lung left`` are all ((lung,), left)); the other words, less fillers of SNOMED CT
    meanings (``structure``, ``of``), sorted, are its structure (``Bowel_Small`` = ``Small
    bowel``). None for: a name starting with the TG-263 ``z`` prefix of helper structures
    (``zLung_L``, ``z_PTV``); a target volume (a word starting with GTV / CTV / PTV / ITV:
    ``GTV-1``, ``Lung-GTV``); both sides named at once (``Lung_L_R``); no structure word.
    """
    raw = str(name).strip()
    if re.match(r"z(?![a-z])|[zZ][\W_]", raw):
        return None
    tokens = _name_tokens(raw)
    words = [w.casefold() for w in re.split(r"[\W_]+", raw) if w]  # PTVp: one word, camelCase "PT Vp"
    if any(t.startswith(_TARGET_VOLUME_PREFIXES) for t in tokens + words):
        return None
    sides = {LATERALITY_TOKENS[t] for t in tokens if t in LATERALITY_TOKENS}
    if len(sides) > 1:
        return None
    structure = tuple(sorted(t for t in tokens if t not in LATERALITY_TOKENS and t not in _FILLER_TOKENS))
    if not structure:
        return None
    return structure, (sides.pop() if sides else None)


#: :data:`TG263_SNOMED` by :func:`clinic_key` (every TG-263 name there reads as one organ).
_TG263_BY_KEY: dict[ClinicKey, str] = {
    key: code for name, code in TG263_SNOMED.items() if (key := clinic_key(name)) is not None
}


def tg263_code(name: str) -> str | None:
    """SNOMED CT concept of a clinic name that reads as a :data:`TG263_SNOMED` name
    (``Lung-Left`` -> 44029006), else None."""
    key = clinic_key(name)
    return _TG263_BY_KEY.get(key) if key is not None else None


def match_clinic_name(name: str, labels: list[Label]) -> int | None:
    """Manifest label value that a clinic ROI name / segment label names, else None.

    Rule, first that applies: (1) the name reads as a TG-263 name (:func:`tg263_code`) whose
    SNOMED CT concept is a label's Segmented Property Type code (SNOMED RT codes translated);
    (2) the name's structure and side (:func:`clinic_key`) equal those of exactly one label's
    name or of its type code meaning. A name of another side (``Lung-Left`` for Right lung),
    of both organs (``Lungs``, ``Lung_Total``), of a target volume (``GTV-1``, ``Lung-GTV``)
    or of a ``z`` helper structure matches no label.
    """
    key = clinic_key(name)
    if key is None:
        return None
    code = _TG263_BY_KEY.get(key)
    if code is not None:
        for lab in labels:
            if sct_value(lab.type.value) == code:
                return lab.value
    hits = {
        lab.value for lab in labels
        if key in (clinic_key(lab.name), clinic_key(lab.type.meaning))
    }
    return hits.pop() if len(hits) == 1 else None


def _laterality(modifiers) -> str | None:
    """Side given by a modifier code sequence (SNOMED CT or SNOMED RT laterality), else None."""
    for item in modifiers or []:
        side = _LATERALITY_CODES.get(sct_value(str(item.get("CodeValue", "") or "")))
        if side is not None:
            return side
    return None


def segment_code(segment: pydicom.Dataset) -> str | None:
    """SNOMED CT concept a SEG segment is coded as, laterality included, or None.

    The Segmented Property Type code (SNOMED RT translated to SNOMED CT). When the segment also
    states a side, by a laterality in its Segmented Property Type Modifier Code Sequence or, for
    an Anatomic Region that is the same structure as the type (same code or code meaning), in
    that region's Anatomic Region Modifier Sequence, a paired organ becomes its side's concept
    (:data:`_LATERAL_CODES`: Lung + Left -> Left lung). The Anatomic Region is not used otherwise:
    the region of a tumour is not the tumour.
    """
    codes = segment.get("SegmentedPropertyTypeCodeSequence", [])
    if not len(codes):
        return None
    item = codes[0]
    code = sct_value(str(item.get("CodeValue", "") or ""))
    side = _laterality(item.get("SegmentedPropertyTypeModifierCodeSequence"))
    if side is None:
        for region in segment.get("AnatomicRegionSequence", []):
            region_code = sct_value(str(region.get("CodeValue", "") or ""))
            same = region_code == code or (
                _norm(region.get("CodeMeaning", "") or "") == _norm(item.get("CodeMeaning", "") or "") != ""
            )
            if same:
                side = _laterality(region.get("AnatomicRegionModifierSequence"))
                if str(item.get("CodingSchemeDesignator", "")).upper() not in ("SCT", "SRT"):
                    code = region_code  # a private type code (e.g. MRSC B-1000 "Breast")
                break
    if side is not None:
        code = _LATERAL_CODES.get((code, side), code)
    return code or None


class _Matcher:
    """Reference segment / ROI -> manifest label value, by the rules in the module docstring:
    the mapping, the SEG code (:func:`segment_code`), the clinic name
    (:func:`match_clinic_name`: TG-263 names and structure + side), the label name.

    Labels that the mapping targets are taken by the mapping only: a segment whose code or name
    matches such a label is not added to it.
    """

    def __init__(self, labels: list[Label], mapping: dict[str, int] | None):
        values = {lab.value for lab in labels}
        self.mapping = {_norm(k): int(v) for k, v in (mapping or {}).items()}
        bad = sorted({v for v in self.mapping.values() if v not in values})
        if bad:
            raise ValueError(f"mapping targets label value(s) {bad} that the model does not have ({sorted(values)})")
        self.used: set[str] = set()
        self.free = [lab for lab in labels if lab.value not in set(self.mapping.values())]
        self.by_code = {sct_value(lab.type.value): lab.value for lab in self.free}
        self.by_name = {_norm(lab.name): lab.value for lab in self.free}

    def match(self, keys: list[str], code: str | None, name: str) -> int | None:
        for key in keys:
            if _norm(key) in self.mapping:
                self.used.add(_norm(key))
                return self.mapping[_norm(key)]
        if code and sct_value(code) in self.by_code:
            return self.by_code[sct_value(code)]
        value = match_clinic_name(name, self.free)
        if value is not None:
            return value
        return self.by_name.get(_norm(name))

    def unused_notes(self) -> list[str]:
        return [f"mapping entry {k!r} matched nothing in the reference" for k in self.mapping if k not in self.used]


# --- geometry helpers -----------------------------------------------------------------------


def _volume_uids(volume: Volume) -> dict[str, int]:
    """SOP Instance UID -> slice index of the volume."""
    out: dict[str, int] = {}
    for k, ds in enumerate(volume.datasets):
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid:
            out[uid] = k
    return out


def _volume_attr(volume: Volume, keyword: str) -> str:
    return str(volume.datasets[0].get(keyword, "") or "") if volume.datasets else ""


def _check_references(
    kind: str, path: Path, refs: set[str], ref_series: set[str], frame_of_reference: str, volume: Volume
) -> None:
    """Refuse a reference drawn on another series (PS3.3 C.8.20.2 / C.8.8.5 references).

    When the reference names source images, at least one must be a slice of ``volume``;
    when it names none, its Frame of Reference UID must be the volume's (when both are given).
    """
    vol_uids = set(_volume_uids(volume))
    series = _volume_attr(volume, "SeriesInstanceUID") or "unknown"
    if refs:
        if not refs & vol_uids:
            other = ", ".join(sorted(ref_series)) or "unknown"
            raise ValueError(
                f"{path.name}: the {kind} references {len(refs)} image(s) of series {other}, none of "
                f"which is a slice of this series ({series}); give the series it was drawn on"
            )
        return
    vol_for = _volume_attr(volume, "FrameOfReferenceUID")
    if frame_of_reference and vol_for and frame_of_reference != vol_for:
        raise ValueError(
            f"{path.name}: the {kind} references no source images and its Frame of Reference UID "
            f"{frame_of_reference} differs from the series' {vol_for}; it belongs to another series"
        )


def _slice_index(volume: Volume, k_float: float) -> int | None:
    """Nearest slice to a fractional slice index, or None when more than half a spacing off
    the volume's first or last slice."""
    if not -0.5 <= k_float <= volume.shape[0] - 0.5:
        return None
    return min(max(int(round(k_float)), 0), volume.shape[0] - 1)


def _fill_even_odd(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterize polygons with the even-odd rule: a pixel is set when its centre lies inside
    an odd number of them (so a contour inside another one is a hole: XOR).

    ``polygons`` are (N, 2) arrays of (row, column) fractional pixel indices, pixel centres at
    integers (the convention of skimage.draw.polygon). Pillow's ImageDraw is not used: it also
    sets pixels the outline merely touches, which inflates small structures (+30 % on a
    3-pixel-radius disc).
    """
    rows, cols = shape
    out = np.zeros(shape, dtype=bool)
    edges = []
    for poly in polygons:
        if len(poly) >= 3:
            edges.append(np.concatenate([poly, np.roll(poly, -1, axis=0)], axis=1))
    if not edges:
        return out
    e = np.concatenate(edges)
    y0, x0, y1, x1 = e[:, 0], e[:, 1], e[:, 2], e[:, 3]
    r_lo = max(0, math.ceil(float(min(y0.min(), y1.min()))))
    r_hi = min(rows - 1, math.floor(float(max(y0.max(), y1.max()))))
    for r in range(r_lo, r_hi + 1):
        sel = ((y0 <= r) & (y1 > r)) | ((y1 <= r) & (y0 > r))  # half-open: each crossing once
        if not sel.any():
            continue
        xs = np.sort(x0[sel] + (r - y0[sel]) * (x1[sel] - x0[sel]) / (y1[sel] - y0[sel]))
        for a, b in zip(xs[0::2], xs[1::2], strict=False):
            c0, c1 = max(math.ceil(a), 0), min(math.ceil(b) - 1, cols - 1)  # centres in [a, b)
            if c0 <= c1:
                out[r, c0 : c1 + 1] = True
    return out


def _paint(layers: dict[int, dict[int, np.ndarray]], shape: tuple[int, int, int]) -> np.ndarray:
    """One uint8 mask from per-label layers (label -> slice index -> (rows, columns) bool).

    Where labels overlap, the smaller structure (fewer voxels) is painted last and wins, so a
    structure inside another (a tumour inside its oedema) stays visible; the larger one loses
    those voxels.
    """
    mask = np.zeros(shape, dtype=np.uint8)
    size = {v: sum(int(a.sum()) for a in per_slice.values()) for v, per_slice in layers.items()}
    for value in sorted(layers, key=lambda v: (-size[v], v)):
        for k, layer in layers[value].items():
            mask[k][layer] = value
    return mask


# --- SEG -------------------------------------------------------------------------------------


def _fg(ds: pydicom.Dataset, frame: int, keyword: str):
    """Item of a functional group macro for one frame: per-frame first, then shared."""
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and frame < len(per) and keyword in per[frame]:
        seq = per[frame].get(keyword)
        return seq[0] if len(seq) else None
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared) and keyword in shared[0]:
        seq = shared[0].get(keyword)
        return seq[0] if len(seq) else None
    return None


def _frame_sources(ds: pydicom.Dataset, frame: int) -> list[str]:
    """Referenced SOP Instance UIDs of a frame's source images (Derivation Image Sequence >
    Source Image Sequence, per-frame functional group first, then shared)."""
    groups = []
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and frame < len(per):
        groups.append(per[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared):
        groups.append(shared[0])
    for group in groups:
        if "DerivationImageSequence" in group:
            return [
                str(src.get("ReferencedSOPInstanceUID", "") or "")
                for der in group.DerivationImageSequence
                for src in der.get("SourceImageSequence", [])
            ]
    return []


def _check_seg_references(path: Path, ds: pydicom.Dataset, volume: Volume) -> None:
    """:func:`_check_references` with the images a SEG names: its Referenced Series Sequence
    (Common Instance Reference Module, PS3.3 C.12.2) and every frame's source images."""
    refs: set[str] = set()
    ref_series: set[str] = set()
    for s in ds.get("ReferencedSeriesSequence", []):
        ref_series.add(str(s.get("SeriesInstanceUID", "")))
        refs.update(str(i.ReferencedSOPInstanceUID) for i in s.get("ReferencedInstanceSequence", []))
    for f in range(int(ds.get("NumberOfFrames", 1) or 1)):
        refs.update(_frame_sources(ds, f))
    refs.discard("")
    _check_references("SEG", path, refs, ref_series, str(ds.get("FrameOfReferenceUID", "") or ""), volume)


def _match_segments(
    segments: dict[int, pydicom.Dataset], labelmap: bool, matcher: _Matcher
) -> tuple[dict[int, int], dict[int, list[str]], list[str]]:
    """Segment number -> manifest label value by the :class:`_Matcher` rules; also label value ->
    the segment labels it got, and the segments that matched nothing. The LABELMAP background
    segment 0 is no segment."""
    names = [str(s.get("SegmentLabel", "") or f"segment {n}") for n, s in sorted(segments.items())]
    seg_value: dict[int, int] = {}
    matched: dict[int, list[str]] = defaultdict(list)
    unmatched: list[str] = []
    for (n, s), name in zip(sorted(segments.items()), names, strict=False):
        if labelmap and n == 0:
            continue
        shown = name if names.count(name) == 1 else f"{name} [{n}]"
        value = matcher.match([name, str(n)], segment_code(s), name)
        if value is None:
            unmatched.append(shown)
        else:
            seg_value[n] = value
            matched[value].append(shown)
    return seg_value, matched, unmatched


def _segmentation(ds: pydicom.Dataset) -> hd.seg.Segmentation:
    """``ds`` as a :class:`highdicom.seg.Segmentation` (``ds`` is changed in place).

    Two repairs let highdicom read SEGs other tools write: pixel data of a big endian data set
    (Explicit VR Big Endian, retired, PS3.5 A.3) is rewritten little endian, the only byte
    order highdicom parses; and when the Dimension Index Sequence (Multi-frame Dimension
    Module, PS3.3 C.7.6.17) of a BINARY or FRACTIONAL SEG does not index Referenced Segment
    Number, by which highdicom tells the segments' frames apart, that index is added from each
    frame's Segment Identification Sequence (Segmentation Functional Groups, PS3.3 C.8.20.3).

    Raises
    ------
    Exception
        What pydicom's pixel decoders or highdicom raise for data they cannot read (several
        types; the caller reports them).
    """
    import highdicom as hd  # deferred: start-up time (importers of this module rarely read a SEG)

    if not ds.file_meta.TransferSyntaxUID.is_little_endian:
        pixels = ds.pixel_array
        ds.PixelData = pack_bits(pixels) if int(ds.BitsAllocated) == 1 else pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dims = ds.get("DimensionIndexSequence")
    frames = ds.get("PerFrameFunctionalGroupsSequence", [])
    if (
        str(ds.get("SegmentationType", "")).upper() != "LABELMAP"
        and dims is not None
        and not any(d.get("DimensionIndexPointer") == _SEGMENT_NUMBER for d in dims)
        and all("SegmentIdentificationSequence" in f and "FrameContentSequence" in f for f in frames)
    ):
        item = pydicom.Dataset()
        item.DimensionIndexPointer = _SEGMENT_NUMBER
        item.FunctionalGroupPointer = Tag(0x0062, 0x000A)  # Segment Identification Sequence
        dims.insert(0, item)
        for f in frames:
            content = f.FrameContentSequence[0]
            values = content.get("DimensionIndexValues", [])
            values = [values] if isinstance(values, int) else list(values)
            content.DimensionIndexValues = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber), *values]
    return hd.seg.Segmentation.from_dataset(ds, copy=False)


def _check_seg_planes(path: Path, seg: hd.seg.Segmentation, volume: Volume) -> None:
    """Refuse a SEG whose frames are not planes of the volume's grid: another Image Orientation
    (Patient) (PS3.3 C.7.6.2.1.1) or Pixel Spacing (PS3.3 10.7.1.3), or frames that form no
    regularly spaced stack (highdicom's volume geometry; gaps where no frame is are allowed).

    Raises
    ------
    ValueError
        With what differs; a SEG is never resampled.
    """
    geometry = seg.get_volume_geometry()
    if geometry is None:
        raise ValueError(
            f"{path.name}: the SEG frames do not form a stack of parallel, evenly spaced planes in the "
            "patient coordinate system (Plane Position and Orientation (Patient)); resampling a SEG is not supported"
        )
    _, along_columns, along_rows = geometry.unit_vectors()  # axes (slices, rows, columns)
    iop = np.concatenate([along_rows, along_columns])  # Image Orientation (Patient): row, then column direction
    if np.max(np.abs(iop - volume.direction[:2].ravel())) > ORIENTATION_TOLERANCE:
        raise ValueError(
            f"{path.name}: SEG planes (orientation {[round(float(v), 6) for v in iop]}) are not the series' planes; "
            "resampling a SEG is not supported"
        )
    ps = np.asarray(geometry.pixel_spacing)
    if np.max(np.abs(ps - np.asarray(volume.spacing[1:]))) > PIXEL_SPACING_TOLERANCE_REL * max(ps):
        raise ValueError(
            f"{path.name}: SEG Pixel Spacing {[round(float(v), 6) for v in ps]} differs from the series' "
            f"{list(volume.spacing[1:])}; resampling a SEG is not supported"
        )


def _plane_on(path: Path, volume: Volume, position, size: tuple[int, int], what: str) -> tuple[int, int, int] | None:
    """Where a SEG plane whose first pixel is at ``position`` (Image Position (Patient), mm)
    lies in ``volume``: (slice, row, column) index of that first pixel, or None when the plane
    is more than half a slice spacing off the volume or beside it; ``size`` is (rows, columns).

    Raises
    ------
    ValueError
        If the first pixel falls between pixel centres of the volume (more than
        :data:`IN_PLANE_TOLERANCE_PX`).
    """
    k_f, r_f, c_f = volume.patient_to_index(np.asarray([[float(v) for v in position]]))[0]
    k = _slice_index(volume, float(k_f))
    if k is None:
        return None
    r0, c0 = int(round(r_f)), int(round(c_f))
    if abs(r_f - r0) > IN_PLANE_TOLERANCE_PX or abs(c_f - c0) > IN_PLANE_TOLERANCE_PX:
        raise ValueError(
            f"{path.name}: {what} starts between pixel centres of the series "
            f"(row {r_f:.2f}, column {c_f:.2f}); resampling a SEG is not supported"
        )
    _, R, C = volume.shape
    if r0 >= R or c0 >= C or r0 + size[0] <= 0 or c0 + size[1] <= 0:
        return None
    return k, r0, c0


def _read_seg(path: Path, volume: Volume, matcher: _Matcher) -> Reference:
    """A DICOM SEG on ``volume``'s grid (:func:`read_reference` says how), read by highdicom.

    Parameters
    ----------
    path:
        The SEG file (PS3.3 A.51 Segmentation IOD; BINARY, FRACTIONAL or LABELMAP).
    volume:
        The source series, (slices, rows, columns).
    matcher:
        Segment -> manifest label value.

    Returns
    -------
    Reference
        ``mask`` uint8 (slices, rows, columns); ``notes`` count the frames off the volume.

    Raises
    ------
    ValueError
        If the SEG has no segments, is drawn on another series, cannot be decoded, needs
        resampling (:func:`_check_seg_planes`, :func:`_plane_on`) or has no frame on the volume.
    """
    ds = pydicom.dcmread(path)
    segments = {int(s.SegmentNumber): s for s in ds.get("SegmentSequence", [])}
    if not segments:
        raise ValueError(f"{path.name}: the SEG has no segments (empty Segment Sequence)")
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    labelmap = seg_type == "LABELMAP" or str(ds.get("SOPClassUID", "")) == SEG_LABELMAP_SOP_CLASS
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    _check_seg_references(path, ds, volume)
    seg_value, matched, unmatched = _match_segments(segments, labelmap, matcher)

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
    try:
        seg = _segmentation(ds)
    except Exception as exc:  # pydicom's decoders and highdicom raise many types
        raise ValueError(f"{path.name}: SEG pixel data cannot be decoded (transfer syntax {ts}): {exc}") from exc
    _check_seg_planes(path, seg, volume)
    size = (int(ds.Rows), int(ds.Columns))
    positions = [getattr(_fg(ds, f, "PlanePositionSequence"), "ImagePositionPatient", None) for f in range(n_frames)]
    off = sum(p is None or _plane_on(path, volume, p, size, f"frame {f + 1}") is None for f, p in enumerate(positions))
    if off == n_frames:
        raise ValueError(
            f"{path.name}: none of the SEG's {n_frames} frame(s) lies on a slice of this series; "
            "the reference does not overlap the volume"
        )
    notes = [f"{off} of {n_frames} SEG frame(s) lie outside the series and were skipped"] if off else []

    # one segment at a time (a dense volume each); with no match, the first one is decoded all
    # the same, so that an undecodable SEG is refused whatever the labels
    S, R, C = volume.shape
    max_frac = float(ds.get("MaximumFractionalValue", 255) or 255)
    layers: dict[int, dict[int, np.ndarray]] = defaultdict(dict)  # label -> slice -> (R, C) bool
    for n in sorted(seg_value) or [n for n in sorted(segments) if n > 0][:1]:
        try:
            stack = seg.get_volume(segment_numbers=[n], rescale_fractional=False)
        except Exception as exc:  # as above
            raise ValueError(f"{path.name}: SEG pixel data cannot be decoded (transfer syntax {ts}): {exc}") from exc
        if n not in seg_value:
            continue
        planes = stack.array[..., 0]  # (SEG slices, rows, columns) on the SEG's own regular grid
        on = planes / max_frac >= FRACTION_THRESHOLD if seg_type == "FRACTIONAL" else planes > 0
        firsts = stack.map_indices_to_reference(np.array([[i, 0, 0] for i in range(len(planes))]))
        for i, first in enumerate(firsts):
            where = _plane_on(path, volume, first, size, f"SEG plane {i + 1}") if on[i].any() else None
            if where is None:
                continue
            k, r0, c0 = where
            r1, c1 = max(r0, 0), max(c0, 0)  # the part of the plane on the volume
            r2, c2 = min(r0 + size[0], R), min(c0 + size[1], C)
            layer = layers[seg_value[n]].setdefault(k, np.zeros((R, C), dtype=bool))
            layer[r1:r2, c1:c2] |= on[i, r1 - r0 : r2 - r0, c1 - c0 : c2 - c0]
    mask = _paint(layers, volume.shape)
    notes.extend(matcher.unused_notes())
    return Reference(mask, {v: ", ".join(n) for v, n in matched.items()}, unmatched, "SEG", notes)


# --- RTSTRUCT --------------------------------------------------------------------------------


def _read_rtstruct(path: Path, volume: Volume, matcher: _Matcher) -> Reference:
    ds = pydicom.dcmread(path)
    rois = {str(r.ROINumber): str(r.get("ROIName", "") or f"ROI {r.ROINumber}") for r in ds.get("StructureSetROISequence", [])}
    contours_by_roi = {str(rc.ReferencedROINumber): rc for rc in ds.get("ROIContourSequence", [])}
    if not rois or not any(len(rc.get("ContourSequence", [])) for rc in contours_by_roi.values()):
        raise ValueError(f"{path.name}: the RTSTRUCT has no ROI with contours")

    refs: set[str] = set()
    ref_series: set[str] = set()
    frame_of_reference = ""
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        frame_of_reference = frame_of_reference or str(fr.get("FrameOfReferenceUID", "") or "")
        for study in fr.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                ref_series.add(str(series.get("SeriesInstanceUID", "")))
                refs.update(str(i.ReferencedSOPInstanceUID) for i in series.get("ContourImageSequence", []))
    for rc in contours_by_roi.values():
        for c in rc.get("ContourSequence", []):
            refs.update(str(i.ReferencedSOPInstanceUID) for i in c.get("ContourImageSequence", []))
    refs.discard("")
    _check_references("RTSTRUCT", path, refs, ref_series, frame_of_reference, volume)

    S, R, C = volume.shape
    layers: dict[int, dict[int, np.ndarray]] = defaultdict(dict)  # label -> slice -> (R, C) bool
    matched: dict[int, list[str]] = defaultdict(list)
    unmatched: list[str] = []
    notes: list[str] = []
    on_volume = off_volume = not_planar = not_closed = 0
    for number, name in rois.items():
        shown = name if list(rois.values()).count(name) == 1 else f"{name} [{number}]"
        value = matcher.match([name, number], None, name)
        if value is None:
            unmatched.append(shown)
        else:
            matched[value].append(shown)
        per_slice: dict[int, list[np.ndarray]] = defaultdict(list)
        rc = contours_by_roi.get(number)
        for c in rc.get("ContourSequence", []) if rc is not None else []:
            data = c.get("ContourData")
            if data is None or len(data) < 3:
                continue
            idx = volume.patient_to_index(np.asarray([float(v) for v in data]).reshape(-1, 3))
            if np.ptp(idx[:, 0]) > 0.5:
                not_planar += 1
                continue
            k = _slice_index(volume, float(idx[:, 0].mean()))
            if k is None:
                off_volume += 1
                continue
            on_volume += 1
            if str(c.get("ContourGeometricType", "")).upper() not in _CLOSED_TYPES:
                not_closed += 1
                continue
            per_slice[k].append(idx[:, 1:])
        if value is None:
            continue
        for k, polygons in per_slice.items():
            layer = layers[value].setdefault(k, np.zeros((R, C), dtype=bool))
            layer |= _fill_even_odd(polygons, (R, C))
    if not on_volume:
        raise ValueError(
            f"{path.name}: no contour of the RTSTRUCT lies in a slice plane of this series; "
            "the reference does not overlap the volume"
        )
    if off_volume:
        notes.append(f"{off_volume} contour(s) lie outside the series and were skipped")
    if not_planar:
        notes.append(f"{not_planar} contour(s) do not lie in one slice plane and were skipped")
    if not_closed:
        notes.append(f"{not_closed} contour(s) are not CLOSED_PLANAR (points or open lines) and were skipped")
    notes.extend(matcher.unused_notes())
    mask = _paint(layers, volume.shape)
    return Reference(mask, {v: ", ".join(n) for v, n in matched.items()}, unmatched, "RTSTRUCT", notes)


# --- NIfTI -----------------------------------------------------------------------------------


def sample_label_map(volume: Volume, nifti_path: Path) -> np.ndarray:
    """Sample a NIfTI label map (RAS affine) onto ``volume``'s grid, nearest neighbour.

    The NIfTI affine maps voxel indices to RAS mm; DICOM patient coordinates are LPS, so
    ``x_ras = -x_lps``, ``y_ras = -y_lps``. Every voxel centre of the volume is mapped to the
    NIfTI grid and the nearest label is taken; voxels outside the map get 0.

    Parameters
    ----------
    volume:
        Target grid.
    nifti_path:
        Label map file (``.nii`` / ``.nii.gz``).

    Returns
    -------
    np.ndarray
        int64 (slices, rows, columns), the label map's values.
    """
    import nibabel as nib

    img = cast("nib.Nifti1Image", nib.load(str(nifti_path)))  # NIfTI-2 images subclass it
    data = np.asarray(img.dataobj)
    inv = np.linalg.inv(img.affine)
    S, R, C = volume.shape
    out = np.zeros((S, R, C), dtype=np.int64)
    rr, cc = np.meshgrid(np.arange(R), np.arange(C), indexing="ij")
    for k in range(S):
        ijk = np.stack([np.full(rr.size, k), rr.ravel(), cc.ravel()], axis=1)
        lps = volume.index_to_patient(ijk)
        ras = lps * np.array([-1.0, -1.0, 1.0])
        vox = ras @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(vox).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.array(data.shape[:3])), axis=1)
        lab = np.zeros(rr.size, dtype=np.int64)
        lab[ok] = data[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        out[k] = lab.reshape(R, C)
    return out


def _read_nifti(path: Path, volume: Volume, labels: list[Label], mapping: dict[str, int] | None) -> Reference:
    import nibabel as nib

    try:
        img = cast("nib.Nifti1Image", nib.load(str(path)))
    except Exception as exc:  # nibabel raises several types for bad files
        raise ValueError(f"{path.name}: not a readable NIfTI file: {exc}") from exc
    shape = tuple(int(n) for n in img.shape)
    if len(shape) != 3:
        raise ValueError(f"{path.name}: a 3D label map is expected, the NIfTI has shape {shape}")

    values: dict[int, int] = {}
    for key, v in (mapping or {}).items():
        if not str(key).strip().lstrip("-").isdigit():
            raise ValueError(f"mapping {key!r}: a NIfTI label map is mapped by value (e.g. 10,11=1), not by name")
        values[int(key)] = int(v)
    known = {lab.value for lab in labels}
    bad = sorted({v for v in values.values() if v not in known})
    if bad:
        raise ValueError(f"mapping targets label value(s) {bad} that the model does not have ({sorted(known)})")

    # does the volume's box meet the label map's? (corners through both affines, LPS -> RAS)
    S, R, C = volume.shape
    corners = np.array([[k, r, c] for k in (0, S - 1) for r in (0, R - 1) for c in (0, C - 1)], dtype=np.float64)
    ras = volume.index_to_patient(corners) * np.array([-1.0, -1.0, 1.0])
    inv = np.linalg.inv(img.affine)
    vox = ras @ inv[:3, :3].T + inv[:3, 3]
    lo, hi = vox.min(axis=0), vox.max(axis=0)
    if np.any(hi < -0.5) or np.any(lo > np.asarray(shape) - 0.5):
        raise ValueError(
            f"{path.name}: the label map does not overlap the series (its voxels span "
            f"{[round(float(a), 1) for a in lo]} to {[round(float(b), 1) for b in hi]} in label map "
            f"indices, the map is {list(shape)}); is it the segmentation of this series?"
        )

    lab = sample_label_map(volume, path)
    present = [int(v) for v in np.unique(lab) if v != 0]
    if not present:
        raise ValueError(f"{path.name}: the label map has no non-zero voxel inside the series' volume")
    if not values:
        values = {v: v for v in present if v in known}
    mask = np.zeros(lab.shape, dtype=np.uint8)
    matched: dict[int, list[str]] = defaultdict(list)
    for ref_value, target in sorted(values.items()):
        matched[target].append(str(ref_value))
        if ref_value in present:
            mask[lab == ref_value] = target
    notes = [f"label map value {v} (mapped) does not occur in the series' volume" for v in sorted(values) if v not in present]
    unmatched = [str(v) for v in present if v not in values]
    return Reference(mask, {v: ", ".join(n) for v, n in matched.items()}, unmatched, "NIFTI", notes)


# --- public API ------------------------------------------------------------------------------


def reference_kind(path: Path) -> str:
    """``"SEG"``, ``"RTSTRUCT"`` or ``"NIFTI"`` for a reference file.

    Raises
    ------
    ValueError
        If the file is missing, is neither a DICOM file nor ``.nii``/``.nii.gz``, or is DICOM of
        another modality.
    """
    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return "NIFTI"
    if not path.is_file():
        raise ValueError(f"reference {path}: no such file")
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(
            f"reference {path.name}: neither a DICOM SEG / RTSTRUCT file nor a .nii/.nii.gz label map ({exc})"
        ) from exc
    modality = str(ds.get("Modality", "") or "")
    if modality in ("SEG", "RTSTRUCT"):
        return modality
    raise ValueError(
        f"reference {path.name}: DICOM of modality {modality or 'unknown'!r}; a reference must be a "
        "SEG, an RTSTRUCT or a .nii/.nii.gz label map"
    )


def read_reference(
    path: Path, volume: Volume, labels: list[Label], mapping: dict[str, int] | None = None
) -> Reference:
    """Read a reference segmentation onto ``volume``'s grid, with manifest label values.

    Parameters
    ----------
    path:
        A DICOM SEG (Modality ``SEG``, PS3.3 C.8.20), an RT Structure Set (Modality
        ``RTSTRUCT``, PS3.3 C.8.8.5 / C.8.8.6), or a NIfTI label map (``.nii`` / ``.nii.gz``,
        RAS affine in mm).
    volume:
        The source series (:func:`dicom_ai.infer.volume.load_series`); its grid is
        (slices, rows, columns), patient coordinates LPS in mm.
    labels:
        The model's manifest labels.
    mapping:
        Reference segment label / segment number / ROI name / ROI number / label map value
        -> manifest label value, e.g. from :func:`parse_mapping`. Names are compared
        case-insensitively. For SEG and RTSTRUCT it comes before the automatic matching
        (property type code, clinic name, label name: see the module docstring); labels it
        targets get no automatically matched segment. For a NIfTI map it replaces the
        identity matching.

    Returns
    -------
    Reference
        ``mask`` uint8 (slices, rows, columns) with manifest label values. A reference of which
        nothing matches a label is returned (``matched`` empty, ``mask`` all 0);
        :meth:`Reference.no_match_message` says so with the names found, for the user.

        * SEG: BINARY frames (pixels > 0), FRACTIONAL frames (value / Maximum Fractional Value
          >= :data:`FRACTION_THRESHOLD`) and LABELMAP frames (pixel value = segment number;
          segment 0 is background) are placed by their Image Position (Patient); frames may be
          smaller than the series' images but must share its orientation, pixel spacing and
          pixel grid (no resampling). Segments on one label are united.
        * RTSTRUCT: each CLOSED_PLANAR contour goes to the slice nearest to its plane (within
          half a slice spacing) and is filled in (row, column) pixel indices, pixel centres
          inside; several contours of one ROI on one slice combine by XOR (even-odd rule), so
          an inner contour is a hole; different ROIs on one label are united. POINT / OPEN_* contours and contours
          off the series are skipped (``notes``).
        * NIfTI: nearest-neighbour sampling through both affines; values outside the map are 0.

        Where structures of different labels overlap (SEG, RTSTRUCT), the smaller one wins
        (:func:`_paint`): one mask holds one label per voxel.

    Raises
    ------
    ValueError
        If the file type is not one of the three; the reference references images none of
        which is in ``volume`` (another series), or has another Frame of Reference without
        image references; nothing of it lies on the volume (no overlap); it has no segment,
        ROI contour or non-zero label; a SEG needs resampling (other orientation, pixel
        spacing or sub-pixel shift) or cannot be decoded; or ``mapping`` is not usable.
    """
    path = Path(path)
    kind = reference_kind(path)
    if kind == "NIFTI":
        ref = _read_nifti(path, volume, labels, mapping)
    elif kind == "SEG":
        ref = _read_seg(path, volume, _Matcher(labels, mapping))
    else:
        ref = _read_rtstruct(path, volume, _Matcher(labels, mapping))
    ref.source, ref.labels = path.name, list(labels)
    for note in ref.notes:
        logger.info("%s: %s", path.name, note)
    message = ref.no_match_message()
    if message:  # info, as the notes: the caller decides (the CLI refuses such a reference)
        logger.info("%s", message)
    return ref


def dice_scores(pred: np.ndarray, ref: Reference, labels: list[Label]) -> dict[int, float | None]:
    """Dice per manifest label of a predicted mask against a reference.

    Parameters
    ----------
    pred:
        Integer label mask (slices, rows, columns) on the same grid as ``ref.mask``.
    ref:
        From :func:`read_reference`.
    labels:
        The manifest labels to score.

    Returns
    -------
    dict
        Label value -> Dice in [0, 1] (:func:`dicom_ai.evaluate.metrics.dice_per_label`, MONAI's
        DiceMetric), or None when the reference has no counterpart for the label (not in
        ``ref.matched``: it cannot judge it) or the label is in neither mask.

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    pred = np.asarray(pred)
    if pred.shape != ref.mask.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the reference's {ref.mask.shape}")
    scored = [lab.value for lab in labels if lab.value in ref.matched and ((pred == lab.value).any() or (ref.mask == lab.value).any())]
    out: dict[int, float | None] = {lab.value: None for lab in labels}
    if scored:
        from dicom_ai.evaluate.metrics import dice_per_label  # deferred: start-up time (torch)

        out.update(dice_per_label(pred, ref.mask, scored))
    return out


def read_matched_reference(path: Path, volume: Volume, labels: list[Label], mapping_items: list[str] | None = None) -> Reference:
    """:func:`read_reference` with the CLI's ``--map`` items (:func:`parse_mapping`), refusing a
    reference of which nothing matches a label.

    Raises
    ------
    ValueError
        As :func:`read_reference` and :func:`parse_mapping`, and when no segment, ROI or value
        matches a label (the message lists the names found).
    """
    mapping = parse_mapping(mapping_items, labels) if mapping_items else None
    ref = read_reference(Path(path), volume, labels, mapping)
    if not ref.matched:
        raise ValueError(ref.no_match_message())
    return ref

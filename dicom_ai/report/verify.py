"""A VERIFIED copy of an SR document: what a clinician's approval of a job's report makes of it.

PS3.3 C.17.2 SR Document General Module: Verification Flag (0040,A493) ``VERIFIED`` means the
document was attested to by a Verifying Observer, who is accountable for its content; the
Verifying Observer Sequence (0040,A073) is then required (type 1C) and names that observer, the
organisation, and when. The copy is a new SR document: the content changed, so it has a new
SOP Instance UID (PS3.3: one UID, one object; derived deterministically from the old one, so
verifying the same document again names the same object), it keeps the series of the original,
and it lists the original in Predecessor Documents Sequence (0040,A360), which C.17.2 requires
when a document includes content of other documents.
"""

from __future__ import annotations

import copy
import datetime
import re

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_ROOT_UID, UID
from pydicom.valuerep import PersonName

from dicom_ai.report import uids

#: Bump only if the derivation itself changes; every verified SR's UID changes with it.
_SCHEME = "dicom-ai/verified-sr/1"
#: SR Storage SOP Classes: 1.2.840.10008.5.1.4.1.1.88.<n> (PS3.4 B.5). Key Object Selection
#: (.59) shares the SR Document General Module only in part and has no Verification Flag.
_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Value lengths: LO 64 characters, PN 64 characters per component group (PS3.5 6.2).
_LO_MAX = 64
_PN_MAX = 64


def verified_uid(sop_instance_uid: str, *, prefix: str = PYDICOM_ROOT_UID) -> UID:
    """SOP Instance UID of the verified copy of the SR document ``sop_instance_uid``: the same
    for the same input, different from it (PS3.5 B.2, a hash under ``prefix``)."""
    return uids.derive(_SCHEME, [str(sop_instance_uid)], prefix)


def observer_pn(name: str) -> PersonName:
    """``name`` as a Person Name: a name that already has components (``"Ray^Anna"``) is kept,
    a plain login name (``"dr.ray"``) becomes the family name component alone, written with a
    trailing ``^`` (``"dr.ray^"``) so that it reads as one deliberate component.

    Raises
    ------
    ValueError
        If ``name`` is empty, longer than 64 characters, or holds a backslash or a control
        character (not allowed in PN, PS3.5 6.2).
    """
    name = name.strip()
    if not name:
        raise ValueError("the verifying observer's name is empty")
    if "\\" in name or any(ord(c) < 32 for c in name):
        raise ValueError(f"the verifying observer's name {name!r} holds a character PN does not allow")
    if "^" not in name and "=" not in name:
        name += "^"
    if len(name) > _PN_MAX:
        raise ValueError(f"the verifying observer's name {name!r} is longer than {_PN_MAX} characters")
    return PersonName(name)


def _dt(when: datetime.datetime) -> str:
    """DT of ``when``: in UTC with ``+0000`` when it has a zone, else as it is (local time of
    whoever made it, PS3.5 6.2)."""
    if when.tzinfo is not None and when.utcoffset() is not None:
        return when.astimezone(datetime.UTC).strftime("%Y%m%d%H%M%S.%f") + "+0000"
    return when.strftime("%Y%m%d%H%M%S.%f")


def _in_zone_of(sr: pydicom.Dataset, when: datetime.datetime) -> datetime.datetime:
    """``when`` for the document's DA/TM values: as it is without a zone, else in the document's
    Timezone Offset From UTC (0008,0201) when it has one, in UTC when not."""
    if when.tzinfo is None or when.utcoffset() is None:
        return when
    offset = str(sr.get("TimezoneOffsetFromUTC", "") or "")
    match = re.fullmatch(r"([+-])(\d\d)(\d\d)", offset)
    if match is None:
        return when.astimezone(datetime.UTC)
    minutes = int(match[2]) * 60 + int(match[3])
    return when.astimezone(datetime.timezone(datetime.timedelta(minutes=-minutes if match[1] == "-" else minutes)))


def verified_sr(sr: pydicom.Dataset, *, observer_name: str, organization: str,
                when: datetime.datetime) -> pydicom.Dataset:
    """A VERIFIED copy of the SR document ``sr`` (PS3.3 C.17.2 SR Document General Module);
    ``sr`` itself is not changed.

    The copy gets: Verification Flag (0040,A493) ``VERIFIED``; a Verifying Observer Sequence
    (0040,A073) of one item with Verifying Observer Name (0040,A075, PN, :func:`observer_pn`),
    an empty Verifying Observer Identification Code Sequence (0040,A088, type 2), Verifying
    Organization (0040,A027, LO) and Verification DateTime (0040,A030, DT from ``when``);
    Preliminary Flag (0040,A496, type 3 in the module, so allowed in every SR IOD using it,
    Comprehensive 3D SR included) ``FINAL``; a Predecessor Documents Sequence (0040,A360)
    naming ``sr``; a new SOP Instance UID (:func:`verified_uid`, in the data set and the file
    meta information); Instance Creation Date/Time (0008,0012/0013) from ``when`` (in the
    document's Timezone Offset From UTC, if it has one and ``when`` has a zone, else in UTC).
    Completion Flag, content, series, evidence and everything else stay as they are.

    Parameters
    ----------
    sr: pydicom.Dataset
        An SR document (an SR Storage SOP Class with a Verification Flag), e.g. a
        :class:`highdicom.sr.Comprehensive3DSR` from :func:`dicom_ai.report.sr.build_sr`, or one
        read from a file. Shapes and units: not applicable.
    observer_name: str
        Who verified it: a login name (``"dr.ray"``) or a PN (``"Ray^Anna"``).
    organization: str
        Verifying Organization; cut to 64 characters.
    when: datetime.datetime
        When it was verified; with a time zone it is written in UTC (``+0000``), without one as
        it is.

    Returns
    -------
    pydicom.Dataset
        The verified copy (a deep copy of ``sr``, of the same type).

    Raises
    ------
    ValueError
        If ``sr`` is not an SR document or is verified already, or ``observer_name`` or
        ``organization`` is empty or ``observer_name`` not a valid PN.
    """
    sop_class = str(sr.get("SOPClassUID", ""))
    if not sop_class.startswith(_SR_CLASS_PREFIX) or "VerificationFlag" not in sr:
        raise ValueError(f"not an SR document (SOP Class UID {sop_class!r}, "
                         f"{'with' if 'VerificationFlag' in sr else 'no'} Verification Flag)")
    if str(sr.VerificationFlag).upper() == "VERIFIED":
        raise ValueError(f"the SR document {sr.SOPInstanceUID} is verified already")
    old_uid = str(sr.SOPInstanceUID)
    name = observer_pn(observer_name)
    organization = organization.strip()[:_LO_MAX]
    if not organization:
        raise ValueError("the verifying organization is empty")

    out = copy.deepcopy(sr)
    observer = Dataset()
    observer.VerifyingObserverName = name
    observer.VerifyingObserverIdentificationCodeSequence = Sequence()  # type 2: present, empty
    observer.VerifyingOrganization = organization
    observer.VerificationDateTime = _dt(when)
    out.VerificationFlag = "VERIFIED"
    out.VerifyingObserverSequence = Sequence([observer])
    out.PreliminaryFlag = "FINAL"

    predecessor = Dataset()
    predecessor.StudyInstanceUID = sr.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = sr.SeriesInstanceUID
    instance = Dataset()
    instance.ReferencedSOPClassUID = sop_class
    instance.ReferencedSOPInstanceUID = old_uid
    series.ReferencedSOPSequence = Sequence([instance])
    predecessor.ReferencedSeriesSequence = Sequence([series])
    out.PredecessorDocumentsSequence = Sequence([*sr.get("PredecessorDocumentsSequence", []), predecessor])

    new_uid = verified_uid(old_uid)
    out.SOPInstanceUID = new_uid
    if getattr(out, "file_meta", None) is not None:
        out.file_meta.MediaStorageSOPInstanceUID = new_uid
    local = _in_zone_of(sr, when)
    out.InstanceCreationDate = local.strftime("%Y%m%d")
    out.InstanceCreationTime = local.strftime("%H%M%S.%f")
    return out

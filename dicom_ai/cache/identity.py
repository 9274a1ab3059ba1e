"""Patient identity: the Patient Module attributes (PS3.3 C.7.1.1) that say whose images these are.

Five attributes are compared, after normalisation:

* Patient ID (0010,0020), Issuer of Patient ID (0010,0021): leading and trailing spaces (and NUL
  padding) are not significant (LO, PS3.5 6.2).
* Patient's Name (0010,0010): each of the three component groups (alphabetic, ideographic,
  phonetic, ``=``-separated) is split into its ``^``-separated components, each stripped of
  spaces; empty trailing components and groups are dropped, so ``Doe^John^^^`` is ``Doe^John``.
  Components are compared as stored: case and inner spaces count.
* Patient's Birth Date (0010,0030): the DA value, ``YYYYMMDD``; the old ``YYYY.MM.DD`` and
  ``YYYY-MM-DD`` forms are read as the same date.
* Patient's Sex (0010,0040): upper case.

Patient ID, Issuer and Name identify the patient (they key :class:`~dicom_ai.cache.db.Patient`
rows): any difference, an empty value against a non-empty one included, is a conflict. Birth
Date and Sex are Type 2 (an empty value means *unknown*): an empty value agrees with any value,
two different non-empty values conflict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

#: The attributes compared, as (field, DICOM keyword).
FIELDS = (
    ("patient_id", "PatientID"),
    ("issuer", "IssuerOfPatientID"),
    ("name", "PatientName"),
    ("birth_date", "PatientBirthDate"),
    ("sex", "PatientSex"),
)
#: Attributes where an empty value (unknown) agrees with any value.
_UNKNOWN_AGREES = {"birth_date", "sex"}
_OLD_DATE = re.compile(r"^(\d{4})[.-](\d{2})[.-](\d{2})$")


def _lo(value: Any) -> str:
    return str(value if value is not None else "").strip(" \x00")


def normalize_name(value: Any) -> str:
    """Patient's Name (PN) as compared: components stripped, empty trailing ones dropped."""
    groups = []
    for group in _lo(value).split("="):
        components = [c.strip(" \x00") for c in group.split("^")]
        while components and not components[-1]:
            components.pop()
        groups.append("^".join(components))
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def normalize_date(value: Any) -> str:
    """A DA value as ``YYYYMMDD`` (the ACR-NEMA ``YYYY.MM.DD`` form converted), else stripped."""
    text = _lo(value)
    old = _OLD_DATE.match(text)
    return "".join(old.groups()) if old else text


@dataclass(frozen=True)
class PatientIdentity:
    """The normalised patient attributes of one instance or one stored patient."""

    patient_id: str = ""
    issuer: str = ""
    name: str = ""
    birth_date: str = ""
    sex: str = ""

    @classmethod
    def of(
        cls, patient_id: Any = "", issuer: Any = "", name: Any = "", birth_date: Any = "", sex: Any = ""
    ) -> PatientIdentity:
        """Normalise raw values (as a data set or an index row holds them)."""
        return cls(
            patient_id=_lo(patient_id),
            issuer=_lo(issuer),
            name=normalize_name(name),
            birth_date=normalize_date(birth_date),
            sex=_lo(sex).upper(),
        )

    @classmethod
    def from_dataset(cls, ds: Any) -> PatientIdentity:
        """The identity in a pydicom data set (missing attributes are empty)."""
        return cls.of(*(ds.get(keyword, "") for _, keyword in FIELDS))

    def differing(self, other: PatientIdentity) -> list[str]:
        """The DICOM keywords of the attributes in which ``other`` conflicts with this identity
        (empty list: the same patient). See the module docstring for the rule."""
        out = []
        for name, keyword in FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine == theirs or (name in _UNKNOWN_AGREES and not (mine and theirs)):
                continue
            out.append(keyword)
        return out

    def completed_by(self, other: PatientIdentity) -> PatientIdentity:
        """This identity with the unknown Birth Date or Sex taken from ``other`` (which agrees)."""
        return replace(
            self,
            birth_date=self.birth_date or other.birth_date,
            sex=self.sex or other.sex,
        )


def mixed_patients(datasets: list[Any]) -> list[str]:
    """The keywords in which the data sets of one series disagree about the patient (empty: one
    patient). Each data set is compared with what the ones before it said, unknown Birth Date
    or Sex completed along the way, as the index compares each instance with its series."""
    differing: list[str] = []
    known: PatientIdentity | None = None
    for ds in datasets:
        identity = PatientIdentity.from_dataset(ds)
        if known is None:
            known = identity
            continue
        for keyword in known.differing(identity):
            if keyword not in differing:
                differing.append(keyword)
        known = known.completed_by(identity)
    return differing

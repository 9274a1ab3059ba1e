"""text_value reads header strings from their encoded bytes where that gives what pydicom's
conversion gives, and through pydicom otherwise: on every shared real file and on values chosen
to differ (padding, several values, other character sets, implicit VR, empty values)."""

from __future__ import annotations

import io
import itertools

import peers
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_ai.cache.index import instance_meta
from dicom_ai.cache.store import InvalidUID
from dicom_ai.dicom.header import int_value, text_value

#: the string attributes the index keeps (dicom_ai.cache.index.instance_meta)
KEYWORDS = ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "AccessionNumber",
            "StudyDescription", "SeriesInstanceUID", "Modality", "BodyPartExamined",
            "SeriesDescription", "SOPClassUID", "SOPInstanceUID", "IssuerOfPatientID",
            "PatientBirthDate", "PatientSex")


def _pydicom(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "")


def _both(raw: bytes) -> tuple[list[str], list[str]]:
    """text_value of each keyword on one parse of ``raw``, pydicom's on another."""
    fast = pydicom.dcmread(io.BytesIO(raw), force=True)
    slow = pydicom.dcmread(io.BytesIO(raw), force=True)
    return [text_value(fast, k) for k in KEYWORDS], [_pydicom(slow, k) for k in KEYWORDS]


def _shared_files() -> list:
    files = []
    for folder in sorted({p.parent for p in peers.SHARED_DATA.rglob("*.dcm")}):
        in_folder = sorted(folder.glob("*.dcm"))
        files += in_folder if "edge" in str(folder) else in_folder[:2]
    return files


def test_every_shared_file_reads_as_pydicom_reads_it():
    files = _shared_files()
    assert len(files) > 20
    for path in files:
        fast, slow = _both(path.read_bytes())
        assert fast == slow, path


def _encoded(values: dict, charset: str | None, syntax: str) -> bytes:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False, implicit_vr=syntax == ImplicitVRLittleEndian,
               little_endian=True)
    return out.getvalue()


VALUES = [
    {"PatientName": "Doe^John", "PatientID": "P1", "Modality": "CT", "StudyInstanceUID": "1.2.3"},
    {"PatientName": "Doe^Jo ", "PatientID": " lead", "StudyDescription": "odd",
     "SOPInstanceUID": "1.2.34"},  # padded to even length with a space / NUL
    {"PatientName": "", "PatientID": "", "AccessionNumber": "", "PatientSex": ""},
    {"Modality": ["CT", "PT"], "PatientID": "A\\B", "BodyPartExamined": "CHEST"},  # several values
    {"PatientName": "Müller^Jörg", "StudyDescription": "Thorax nativ"},
    {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう", "PatientID": "JP1"},
    {"PatientName": "Wang^XiaoDong=王^小东", "SeriesDescription": "胸部"},
]
CHARSETS = [None, "ISO_IR 100", "ISO_IR 192", ["", "ISO 2022 IR 87"], "GB18030", "ISO_IR 13"]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_chosen_values_read_as_pydicom_reads_them(syntax):
    tried = 0
    for values, charset in itertools.product(VALUES, CHARSETS):
        try:
            raw = _encoded(values, charset, syntax)
        except (UnicodeError, LookupError, ValueError):
            continue  # a value this character set cannot hold
        fast, slow = _both(raw)
        assert fast == slow, (values, charset)
        tried += 1
    assert tried > 25


def test_a_value_pydicom_converted_already_is_read_as_it_is():
    raw = _encoded({"PatientName": "Doe^John", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, None,
                   ExplicitVRLittleEndian)
    ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    assert ds.PatientName == "Doe^John"  # converted now
    ds.PatientName = "Roe^Richard"
    assert text_value(ds, "PatientName") == "Roe^Richard"
    assert text_value(ds, "SOPClassUID") == "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(KeyError):
        text_value(ds, "NoSuchKeyword")


def test_a_plain_ascii_value_is_read_without_pydicom_converting_it():
    raw = _encoded({"PatientName": "Doe^John", "PatientID": "P1"}, "ISO_IR 100", ExplicitVRLittleEndian)
    ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    assert text_value(ds, "PatientName") == "Doe^John"
    assert type(ds._dict[0x00100010]).__name__ == "RawDataElement"  # still as read
    ds = pydicom.dcmread(io.BytesIO(_encoded({"PatientName": "Müller"}, "ISO_IR 100", ExplicitVRLittleEndian)), force=True)
    assert text_value(ds, "PatientName") == "Müller"
    assert type(ds._dict[0x00100010]).__name__ == "DataElement"  # pydicom decoded it


def test_instance_meta_of_every_shared_file_is_what_pydicom_values_give():
    """The index's whole row (text, IS and DS values read from the bytes) equals the one made
    from the same data set with every element converted by pydicom first."""
    for path in _shared_files():
        fast = pydicom.dcmread(path, force=True)
        slow = pydicom.dcmread(path, force=True)
        for _elem in slow:  # iterating converts every element, so no fast path applies
            pass
        syntax = str(fast.file_meta.get("TransferSyntaxUID", ""))
        try:
            expected = instance_meta(slow, syntax)
        except InvalidUID:
            with pytest.raises(InvalidUID):
                instance_meta(fast, syntax)
            continue
        assert instance_meta(fast, syntax) == expected, path


@pytest.mark.parametrize("text,number", [(b"12", 12), (b" 7 ", 7), (b"+3", 3), (b"", None), (b"2.0", None),
                                         (b"1_0", None), (b"x", None)])
def test_an_integer_string_reads_as_pydicom_reads_it(text, number):
    ds = Dataset()
    ds.add(RawDataElement(Tag(0x00200013), "IS", len(text), text, 0, False, True))
    slow = Dataset()
    slow.add(RawDataElement(Tag(0x00200013), "IS", len(text), text, 0, False, True))
    for _elem in slow:
        pass
    assert int_value(ds, "InstanceNumber") == int_value(slow, "InstanceNumber")

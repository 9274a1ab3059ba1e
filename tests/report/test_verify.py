"""The VERIFIED copy of a TID 1500 SR (dicom_ai.report.verify) on a real SEG + SR of LIDC."""

from __future__ import annotations

import copy
import datetime
import shutil

import highdicom as hd
import peers
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_ai.report import build_seg, build_sr
from dicom_ai.report.verify import observer_pn, verified_sr, verified_uid

WHEN = datetime.datetime(2026, 12, 1, 11, 30, 15, 250000, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))


@pytest.fixture(scope="module")
def unverified(small_volume, small_mask, manifest) -> hd.sr.Comprehensive3DSR:
    seg = build_seg(small_volume, small_mask, manifest)
    return build_sr(small_volume, small_mask, seg, manifest)


@pytest.fixture(scope="module")
def files(tmp_path_factory, unverified):
    """The unverified SR and its verified copy, saved; and the input as it was before."""
    folder = tmp_path_factory.mktemp("verify")
    before = copy.deepcopy(unverified)
    verified = verified_sr(unverified, observer_name="dr.ray", organization="Radiology, St. Elsewhere",
                           when=WHEN)
    unverified.save_as(folder / "sr.dcm")
    verified.save_as(folder / "verified.dcm")
    return before, folder / "sr.dcm", folder / "verified.dcm"


def test_flags_and_observer(files) -> None:
    _, _, path = files
    sr = hd.sr.srread(path)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.PreliminaryFlag == "FINAL"
    assert isinstance(sr.content, hd.sr.MeasurementReport)  # the content still parses
    (observer,) = sr.VerifyingObserverSequence
    assert str(observer.VerifyingObserverName) == "dr.ray^"
    assert observer.VerifyingObserverName.family_name == "dr.ray"
    assert "VerifyingObserverIdentificationCodeSequence" in observer
    assert len(observer.VerifyingObserverIdentificationCodeSequence) == 0
    assert observer.VerifyingOrganization == "Radiology, St. Elsewhere"
    assert observer.VerificationDateTime == "20261201103015.250000+0000"  # 11:30 at +0100, in UTC
    assert sr.InstanceCreationDate == "20261201" and sr.InstanceCreationTime == "103015.250000"


def test_new_deterministic_uid(files, unverified) -> None:
    before, old_path, path = files
    ds = pydicom.dcmread(path)
    old = str(before.SOPInstanceUID)
    assert ds.SOPInstanceUID != old
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == verified_uid(old)
    assert len(ds.SOPInstanceUID) <= 64
    again = verified_sr(pydicom.dcmread(old_path), observer_name="someone.else", organization="x",
                        when=datetime.datetime(2027, 1, 1))
    assert again.SOPInstanceUID == ds.SOPInstanceUID  # from the old UID only
    # same study and series; the original is its predecessor
    assert ds.SeriesInstanceUID == before.SeriesInstanceUID and ds.StudyInstanceUID == before.StudyInstanceUID
    (study,) = ds.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == before.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == before.SeriesInstanceUID
    (ref,) = series.ReferencedSOPSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (before.SOPClassUID, old)


def test_input_untouched(files, unverified) -> None:
    before, old_path, _ = files
    assert unverified == before
    assert unverified.VerificationFlag == "UNVERIFIED" and "VerifyingObserverSequence" not in unverified
    assert unverified.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
    assert pydicom.dcmread(old_path).VerificationFlag == "UNVERIFIED"


def test_naive_time_kept_as_is(unverified) -> None:
    out = verified_sr(unverified, observer_name="Ray^Anna", organization="o" * 80,
                      when=datetime.datetime(2026, 12, 1, 8, 5, 0))
    (observer,) = out.VerifyingObserverSequence
    assert observer.VerificationDateTime == "20261201080500.000000"
    assert str(observer.VerifyingObserverName) == "Ray^Anna"  # a PN already: kept
    assert observer.VerifyingOrganization == "o" * 64  # LO


def test_refused(files, unverified) -> None:
    _, _, path = files
    with pytest.raises(ValueError, match="verified already"):
        verified_sr(pydicom.dcmread(path), observer_name="dr.ray", organization="x", when=WHEN)
    with pytest.raises(ValueError, match="not an SR document"):
        ct = Dataset()
        ct.SOPClassUID = pydicom.uid.CTImageStorage
        ct.SOPInstanceUID = "1.2.3"
        verified_sr(ct, observer_name="dr.ray", organization="x", when=WHEN)
    no_flag = copy.deepcopy(unverified)
    del no_flag.VerificationFlag
    with pytest.raises(ValueError, match="not an SR document"):
        verified_sr(no_flag, observer_name="dr.ray", organization="x", when=WHEN)
    with pytest.raises(ValueError, match="empty"):
        verified_sr(unverified, observer_name=" ", organization="x", when=WHEN)
    with pytest.raises(ValueError, match="empty"):
        verified_sr(unverified, observer_name="dr.ray", organization="", when=WHEN)


def test_observer_pn() -> None:
    assert str(observer_pn("dr.ray")) == "dr.ray^"
    assert str(observer_pn(" Ray^Anna ")) == "Ray^Anna"
    for bad in ("a\\b", "x" * 64, "tab\there"):
        with pytest.raises(ValueError):
            observer_pn(bad)


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed")
def test_dciodvfy(files) -> None:
    _, old_path, path = files
    errors, warnings = peers.dciodvfy(path)
    old_errors, old_warnings = peers.dciodvfy(old_path)
    print(f"\nverified SR: {len(errors)} errors, {len(warnings)} warnings")
    for w in warnings:
        print(f"  warning: {w}")
    assert not errors, errors
    assert set(warnings) <= set(old_warnings), sorted(set(warnings) - set(old_warnings))
    assert not old_errors, old_errors

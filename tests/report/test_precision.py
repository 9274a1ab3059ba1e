"""A result computed with the network in bfloat16 says so, and never takes a float32 result's UID.

The precision goes into Algorithm Parameters (0066,0032) of each segment's algorithm
identification (SEG, PS3.3 C.8.20.4 / 10.16) and of each measurement's TID 4019 (SR), and into
the SOP Instance UID's variant; a float32 result keeps the attributes and UIDs it had before.
"""

from __future__ import annotations

import shutil

import highdicom as hd
import pydicom
import pytest

from dicom_ai.report import build_seg, build_sr
from dicom_ai.report.measure import measure_labels
from dicom_ai.report.sc import build_secondary_capture

from .conftest import sub_volume
from .test_dciodvfy import assert_no_errors_of_ours


def _sr_parameters(path) -> set[str | None]:
    """The Algorithm Parameters (TID 4019) of every measurement in the SR file's measurement
    groups, None for a measurement without."""
    found: set[str | None] = set()
    for group in hd.sr.srread(path).content.get_volumetric_roi_measurement_groups():
        for measurement in group.get_measurements():
            items = measurement[0].ContentSequence
            names = [c.ConceptNameCodeSequence[0].CodeMeaning for c in items]
            assert "Algorithm Name" in names
            found.update([c.TextValue for c in items
                          if c.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"] or [None])
    return found


def test_bfloat16_is_recorded_and_gets_its_own_uids(tmp_path, small_volume, small_mask, manifest) -> None:
    seg32 = build_seg(small_volume, small_mask, manifest)
    sr32 = build_sr(small_volume, small_mask, seg32, manifest)
    seg16 = build_seg(small_volume, small_mask, manifest, precision="bfloat16")
    sr16 = build_sr(small_volume, small_mask, seg16, manifest, precision="bfloat16")

    for item in seg32.SegmentSequence:
        assert "AlgorithmParameters" not in item.SegmentationAlgorithmIdentificationSequence[0]
    for item in seg16.SegmentSequence:
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters == "precision=bfloat16"
    assert _sr_parameters(_saved(tmp_path / "sr32.dcm", sr32)) == {None}
    assert _sr_parameters(_saved(tmp_path / "sr16.dcm", sr16)) == {"precision=bfloat16"}

    # the same series, other objects: never the float32 result's SOP Instance UID
    assert seg16.SeriesInstanceUID == seg32.SeriesInstanceUID
    assert sr16.SeriesInstanceUID == sr32.SeriesInstanceUID
    assert seg16.SOPInstanceUID != seg32.SOPInstanceUID
    assert sr16.SOPInstanceUID != sr32.SOPInstanceUID
    all16 = build_seg(small_volume, small_mask, manifest, omit_empty_frames=False, precision="bfloat16")
    all32 = build_seg(small_volume, small_mask, manifest, omit_empty_frames=False)
    assert len({seg16.SOPInstanceUID, seg32.SOPInstanceUID, all16.SOPInstanceUID, all32.SOPInstanceUID}) == 4
    # and the SR's evidence and references follow the SEG it was built with
    assert str(seg16.SOPInstanceUID) in {str(i.ReferencedSOPInstanceUID)
                                         for s in sr16.CurrentRequestedProcedureEvidenceSequence
                                         for series in s.ReferencedSeriesSequence
                                         for i in series.ReferencedSOPSequence}

    # readers: highdicom reads the parameters back; dciodvfy finds nothing of ours
    read = hd.seg.segread(_saved(tmp_path / "seg16.dcm", seg16))
    assert read.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters \
        == "precision=bfloat16"
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed")
    assert_no_errors_of_ours(tmp_path / "seg16.dcm", small_volume.paths[0])
    assert_no_errors_of_ours(tmp_path / "sr16.dcm", small_volume.paths[0])


def test_secondary_capture_uids_name_the_precision(small_volume, small_mask, manifest) -> None:
    volume, mask = sub_volume(small_volume, 0, 2), small_mask[:2]
    measurements = measure_labels(volume, mask, manifest)
    f32 = build_secondary_capture(volume, mask, manifest, measurements)
    b16 = build_secondary_capture(volume, mask, manifest, measurements, precision="bfloat16")
    again = build_secondary_capture(volume, mask, manifest, measurements, precision="bfloat16")
    assert [d.SOPInstanceUID for d in b16] == [d.SOPInstanceUID for d in again]
    assert not {d.SOPInstanceUID for d in b16} & {d.SOPInstanceUID for d in f32}
    assert [d.SeriesInstanceUID for d in b16] == [d.SeriesInstanceUID for d in f32]


def _saved(path, obj: pydicom.Dataset):
    obj.save_as(path, enforce_file_format=True)
    return path

"""Deterministic result UIDs (dicom_ai.report.uids) and their use in the SEG and SR."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from dicom_ai.report import build_seg, build_sr
from dicom_ai.report.uids import (
    device_uid,
    result_instance_uid,
    result_series_uid,
    tracking_uid,
)

from .conftest import make_manifest, sub_volume

SERIES = "1.2.3.4.5"
INSTANCES = ["1.2.3.4.5.1", "1.2.3.4.5.2", "1.2.3.4.5.3"]


def test_same_inputs_same_uids() -> None:
    seg_series = result_series_uid(SERIES, "m", "1.0", "SEG")
    assert seg_series == result_series_uid(SERIES, "m", "1.0", "SEG")
    a = result_instance_uid(SERIES, "m", "1.0", "SEG", INSTANCES)
    b = result_instance_uid(SERIES, "m", "1.0", "seg", list(reversed(INSTANCES)) + INSTANCES[:1])
    assert a == b  # order, repetitions and the case of kind do not matter


def test_uids_are_valid() -> None:
    for uid in (
        result_series_uid(SERIES, "m", "1.0", "SEG"),
        result_instance_uid(SERIES, "m", "1.0", "SEG", INSTANCES),
        tracking_uid(SERIES, "m", "1.0", 1),
        device_uid("node"),
    ):
        assert UID(uid).is_valid
        assert len(uid) <= 64


def test_late_instance_new_instance_uid_same_series() -> None:
    before = result_instance_uid(SERIES, "m", "1.0", "SEG", INSTANCES)
    after = result_instance_uid(SERIES, "m", "1.0", "SEG", [*INSTANCES, "1.2.3.4.5.4"])
    assert before != after
    # the series UID does not depend on the instances at all: see test_seg_and_sr_uids_deterministic


@pytest.mark.parametrize(
    "other",
    [
        ("1.2.3.4.6", "m", "1.0", "SEG"),  # other source series
        (SERIES, "n", "1.0", "SEG"),  # other model
        (SERIES, "m", "1.1", "SEG"),  # other model version
        (SERIES, "m", "1.0", "SR"),  # other kind
    ],
)
def test_any_other_input_changes_the_uids(other: tuple[str, str, str, str]) -> None:
    base = (SERIES, "m", "1.0", "SEG")
    assert result_series_uid(*base) != result_series_uid(*other)
    assert result_instance_uid(*base, INSTANCES) != result_instance_uid(*other, INSTANCES)


def test_no_collision_by_concatenation() -> None:
    # generate_uid joins entropy sources without a separator; ours must not.
    first = result_series_uid(SERIES, "ab", "c", "SEG")
    assert first != result_series_uid(SERIES, "a", "bc", "SEG")


def test_variant() -> None:
    plain = result_instance_uid(SERIES, "m", "1.0", "SEG", INSTANCES)
    assert plain == result_instance_uid(SERIES, "m", "1.0", "SEG", INSTANCES, variant="")
    assert plain != result_instance_uid(SERIES, "m", "1.0", "SEG", INSTANCES, variant="x")


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        result_series_uid(SERIES, "m", "1.0", " ")
    with pytest.raises(ValueError):
        result_instance_uid(SERIES, "m", "1.0", "SEG", [])


def test_seg_and_sr_uids_deterministic(lidc_volume, lidc_mask) -> None:
    manifest = make_manifest()
    vol_a = sub_volume(lidc_volume, 120, 126)
    mask_a = lidc_mask[120:126]
    seg1 = build_seg(vol_a, mask_a, manifest)
    seg2 = build_seg(vol_a, mask_a, manifest)
    assert seg1.SOPInstanceUID == seg2.SOPInstanceUID
    assert seg1.SeriesInstanceUID == seg2.SeriesInstanceUID
    assert [s.TrackingUID for s in seg1.SegmentSequence] == [
        s.TrackingUID for s in seg2.SegmentSequence
    ]
    sr1 = build_sr(vol_a, mask_a, seg1, manifest)
    sr2 = build_sr(vol_a, mask_a, seg2, manifest)
    assert sr1.SOPInstanceUID == sr2.SOPInstanceUID
    assert sr1.SeriesInstanceUID == sr2.SeriesInstanceUID
    assert sr1.SeriesInstanceUID != seg1.SeriesInstanceUID

    # With and without empty frames: different objects, different UIDs, one series.
    seg_all = build_seg(vol_a, mask_a, manifest, omit_empty_frames=False)
    assert seg_all.SOPInstanceUID != seg1.SOPInstanceUID
    assert seg_all.SeriesInstanceUID == seg1.SeriesInstanceUID

    # A late slice arrived: the series grows by one instance.
    vol_b = sub_volume(lidc_volume, 120, 127)
    mask_b = lidc_mask[120:127]
    seg3 = build_seg(vol_b, mask_b, manifest)
    sr3 = build_sr(vol_b, mask_b, seg3, manifest)
    assert seg3.SOPInstanceUID != seg1.SOPInstanceUID
    assert seg3.SeriesInstanceUID == seg1.SeriesInstanceUID
    assert sr3.SOPInstanceUID != sr1.SOPInstanceUID
    assert sr3.SeriesInstanceUID == sr1.SeriesInstanceUID
    # Study and patient stay those of the source.
    for obj in (seg1, sr1, seg3, sr3):
        assert obj.StudyInstanceUID == lidc_volume.datasets[0].StudyInstanceUID
        assert obj.PatientID == lidc_volume.datasets[0].PatientID

"""End to end with real parts: DCMTK storescu -> dicom-ai serve -> Orthanc, checked over REST."""

from __future__ import annotations

import time
from pathlib import Path

import peers
import pydicom
import pytest
from nodeproc import NodeProcess

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
COMP3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"

pytestmark = pytest.mark.integration


def _wait_results(pacs: peers.Orthanc, study_uid: str, node: NodeProcess, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [i for i in pacs.instances_of_study(study_uid) if i["sop_class_uid"] in (SEG, COMP3D_SR)]
        if len({i["sop_class_uid"] for i in got}) == 2:
            return got
        time.sleep(2)
    raise AssertionError(f"no SEG+SR in Orthanc after {timeout} s; node log:\n{node.log_tail()}")


def _check_results(pacs, got, tmp_path: Path, source_dir: Path) -> dict[str, float]:
    assert sorted(i["sop_class_uid"] for i in got) == [SEG, COMP3D_SR]
    src_errors, _ = peers.dciodvfy(next(p for p in sorted(source_dir.iterdir()) if p.is_file()))
    volumes = {}
    for item in got:
        path = pacs.download_instance(item["id"], tmp_path / f"{item['id']}.dcm")
        errors, _ = peers.dciodvfy(path)
        ours = [e for e in errors if e not in src_errors]
        assert ours == [], f"dciodvfy errors in {item['sop_class_uid']}: {ours}"
        if item["sop_class_uid"] == COMP3D_SR:
            import highdicom as hd

            sr = hd.sr.srread(path)
            for group in sr.content.get_volumetric_roi_measurement_groups():
                (volume,) = [m for m in group.get_measurements() if m.unit.value == "ml"]
                volumes[group.finding_type.meaning] = volume.value
    return volumes


def test_lidc_chest_ct_to_orthanc(tmp_path: Path, orthanc: peers.Orthanc, lidc_series) -> None:
    """A real 275-slice chest CT sent by storescu comes back to Orthanc as a valid SEG and SR."""
    with NodeProcess(
        tmp_path / "node",
        destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}],
    ) as node:
        sent = peers.storescu("127.0.0.1", node.port, peers.LIDC_SERIES, aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        study_uid = pydicom.dcmread(lidc_series[0], stop_before_pixels=True).StudyInstanceUID
        got = _wait_results(orthanc, study_uid, node, timeout=600)
        volumes = _check_results(orthanc, got, tmp_path, peers.LIDC_SERIES)
        jobs = node.cli("jobs", "list")
        assert "done" in jobs.stdout, jobs.stdout + jobs.stderr
    # The issue asks for 1-5 L per lung; this patient's right lung is smaller (raised right
    # hemidiaphragm, collapsed apex: see the preview). The classical HU extraction
    # (dicom_ai.train.labels, checked slice by slice) measures 1913 mL left and 929 mL right on
    # this series, so the test checks agreement with that reference and a plausible range.
    assert set(volumes) == {"Left lung", "Right lung"}, volumes
    reference = {"Left lung": 1913.0, "Right lung": 929.0}
    for name, ml in volumes.items():
        assert 500 <= ml <= 5000, f"{name}: {ml} mL"
        assert abs(ml - reference[name]) / reference[name] < 0.15, f"{name}: {ml} mL vs {reference[name]}"
    assert 1000 <= sum(volumes.values()) <= 8000


def test_jpeg2000_series_accepted_and_processed(tmp_path: Path) -> None:
    """The JPEG 2000 TotalSegmentator series, sent as JPEG 2000, is stored and processed."""
    files = peers.restore_totalseg_series(tmp_path / "ts")
    out = tmp_path / "out"
    with NodeProcess(
        tmp_path / "node", destinations=[{"name": "folder", "kind": "folder", "path": str(out)}]
    ) as node:
        sent = peers.storescu("127.0.0.1", node.port, files, aec=node.ae_title, propose="j2k")
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(out.glob("*.dcm"))) < 2:
            time.sleep(1)
        assert len(list(out.glob("*.dcm"))) == 2, node.log_tail()
        stored = list((tmp_path / "node" / "var" / "instances").rglob("*.dcm"))
        assert len(stored) == len(files)
        assert all(
            pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
            == pydicom.uid.JPEG2000Lossless
            for p in stored
        )

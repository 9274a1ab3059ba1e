"""Real oddities through the running node: each series becomes a correct volume or its
job fails with a reason the admin reads in `dicom-ai jobs show`, and the queue goes on."""

from __future__ import annotations

import re
import time
from pathlib import Path

import peers
import pydicom
import pytest
from nodeproc import NodeProcess
from pydicom.uid import generate_uid

from dicom_ai.config import default_model_path

pytestmark = pytest.mark.integration


def _copy_series(files: list[Path], dest: Path, *, drop: int | None = None, localizer: bool = False) -> Path:
    """A copy of a series with new Study/Series/SOP UIDs; optionally one slice dropped, or a
    localizer (Image Type LOCALIZER, coronal) added."""
    dest.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for i, f in enumerate(files):
        if i == drop:
            continue
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(dest / f.name)
        if localizer and i == 0:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
            ds.save_as(dest / "localizer.dcm")
    return dest


def _jobs(node: NodeProcess, n: int, timeout: float = 300) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = node.cli("jobs", "list").stdout
        states = dict(re.findall(r"│\s*(\d+)\s*│\s*(done|failed)\s*│", out))
        if len(states) >= n:
            return {int(k): v for k, v in states.items()}
        time.sleep(1)
    raise AssertionError(f"jobs not finished:\n{node.cli('jobs', 'list').stdout}\n{node.log_tail()}")


def test_tilt_missing_slice_and_localizer(tmp_path, dcmtk, shared_data, lidc_series):
    tilt = shared_data / "edge_cases" / "dcm_qa_ct_GE_tilt" / "GE"
    missing = _copy_series(lidc_series, tmp_path / "missing", drop=137)
    with_localizer = _copy_series(lidc_series, tmp_path / "localizer", localizer=True)
    # the series with a gap and the one with a localizer complete by the idle timer only, which must
    # outlast any stall of the machine mid-send: a series closed early is missing slices
    node = NodeProcess(tmp_path / "node", stable_seconds=6, extra={
        "models": [{"path": str(default_model_path()), "body_parts": []}]})  # the tilted CT is a head
    with node:
        for folder in (tilt, missing, with_localizer):
            out = peers.storescu("127.0.0.1", node.port, folder, aec=node.ae_title)
            assert out.returncode == 0, out.stderr
            time.sleep(2)  # one series at a time, in this order
        states = _jobs(node, 3)
        assert sorted(states.values()) == ["done", "failed", "failed"], states
        reasons = {job_id: node.cli("jobs", "show", str(job_id)).stdout for job_id in states}
    text = "\n".join(reasons.values())
    assert "gantry-tilted" in text, text
    assert "uneven slice spacing" in text, text
    done = [r for r in reasons.values() if ": done" in r]
    assert len(done) == 1 and "Left lung" in done[0]

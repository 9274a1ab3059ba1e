"""A series with one slice whose JPEG-LS entropy-coded data are corrupt: the real worker
(JobRunner, as its queue loop runs it) fails that job with a reason that names the instance and
the decoder's reason, without patient data, and goes on: the next job, on a good JPEG-LS series,
runs to done. The receiver no longer decodes pixel data, so this is where corruption is found."""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from dicom_ai.cache.db import Job, Series, open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.infer import volume as volume_module
from dicom_ai.package.manifest import sha256_of, write_manifest
from dicom_ai.worker import JobRunner, claim_next_job

from ..infer.test_parallel_load import DEMO, garble
from ..report.conftest import make_manifest
from .conftest import file_and_index

PATIENT_NAME = "UNDECODABLE^URSULA"


class Nothing(torch.nn.Module):
    """Background everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(x), torch.zeros_like(x), torch.zeros_like(x)], dim=1)


def _package(folder: Path) -> Path:
    folder.mkdir(parents=True)
    torch.jit.script(Nothing()).save(str(folder / "model.ts"))
    manifest = make_manifest(values=(2, 1), name="dicom-ai-test-lung", version="2.0.0", runtime="torchscript",
                             weights="model.ts", sha256=sha256_of(folder / "model.ts"), spacing=(4.0, 8.0, 8.0),
                             patch_size=(8, 32, 32), network=None)
    write_manifest(folder, manifest)
    return folder


def _add_series(sessions, store: FileStore, slices: list[pydicom.Dataset]) -> None:
    for i, ds in enumerate(slices):
        file_and_index(sessions, store, ds, i + 1, patient_id="P7", patient_name=PATIENT_NAME, accession="ACC7")


@pytest.fixture
def node(tmp_path):
    """Settings, index and store with two series of 12 adjacent JPEG-LS demo slices each: the
    first (new series and instance UIDs) has corrupt entropy-coded data in its 6th slice, the
    second is intact. Returns (settings, sessions, store, bad file name, bad SOP Instance UID)."""
    if not DEMO.is_dir():
        pytest.skip(f"demo series not found at {DEMO}")
    settings = load_settings(None, node={"data_dir": str(tmp_path / "var")}, worker={"device": "cpu"},
                             destinations=[{"name": "pacs", "kind": "folder", "path": str(tmp_path / "out")}])
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    files = sorted(DEMO.glob("*.dcm"))
    by_z = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))

    bad_series = generate_uid()
    bad: list[pydicom.Dataset] = []
    for f in by_z[120:132]:
        ds = pydicom.dcmread(f)
        ds.PatientName = PATIENT_NAME
        ds.SeriesInstanceUID = bad_series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        bad.append(ds)
    broken = bad[5]
    broken.PixelData = encapsulate([garble(next(generate_frames(broken.PixelData, number_of_frames=1)))])
    _add_series(sessions, store, bad)

    good = []
    for f in by_z[150:162]:
        ds = pydicom.dcmread(f)
        ds.PatientName = PATIENT_NAME
        good.append(ds)
    _add_series(sessions, store, good)
    with sessions.begin() as s:
        for series in s.query(Series):
            series.state = "complete"
    uid = str(broken.SOPInstanceUID)
    bad_name = store.abspath(store.instance_relpath(str(broken.StudyInstanceUID), bad_series, uid)).name
    return settings, sessions, store, bad_name, uid


@pytest.mark.parametrize("min_slices", [4, 10_000], ids=["processes", "here"])
def test_undecodable_slice_fails_its_job_and_the_queue_goes_on(tmp_path, node, monkeypatch, caplog,
                                                                min_slices: int) -> None:
    settings, sessions, store, bad_name, bad_uid = node
    monkeypatch.setattr(volume_module, "MIN_SLICES_PER_PROCESS", min_slices)  # 12 slices: 2 processes or none
    caplog.set_level(logging.INFO, logger="dicom_ai")
    package = _package(tmp_path / "pkg")
    with sessions.begin() as s:
        for series in s.query(Series).order_by(Series.id):  # the corrupt series first
            s.add(Job(series=series, model_name="dicom-ai-test-lung", model_version="2.0.0",
                      model_path=str(package)))

    runner = JobRunner(settings, sessions, store)
    while (job_id := claim_next_job(sessions)) is not None:  # the worker's queue loop
        runner.run(job_id)

    with sessions() as s:
        jobs = s.query(Job).order_by(Job.id).all()
        assert [j.state for j in jobs] == ["failed", "done"], [j.reason for j in jobs]
        reason = jobs[0].reason
    assert reason.startswith(f"UndecodableSlice: {bad_name} (SOP Instance UID {bad_uid}): pixel data cannot be "
                             "decoded (transfer syntax JPEG-LS Lossless Image Compression")
    assert reason.endswith(": Invalid JPEG-LS stream, the encoded bit stream contains a general structural problem")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"failed: {reason}" in logged
    for text in (reason, logged):
        assert "UNDECODABLE" not in text and "URSULA" not in text

"""The idle worker reads a series whose sending association was just released, before its
completion signal fires; the job then uses that volume, and gives the same results as a job
that reads the files itself. A series that changed after it was read (a late instance) is read
again by its job; a series of a modality no enabled model takes is not read."""

from __future__ import annotations

import datetime as dt

import pydicom

from dicom_ai.cache.db import Job, Series, utcnow
from dicom_ai.worker import JobRunner, claim_next_job

from .conftest import file_and_index
from .test_worker_plausibility import PATIENT_NAME, Air, _package, node  # noqa: F401  (node: the fixture)


def _released(sessions) -> None:
    """The series as the receiver leaves it at A-RELEASE: still receiving, released just now."""
    now = utcnow()
    with sessions.begin() as s:
        series = s.query(Series).one()
        series.state, series.receiving_association = "receiving", None
        series.released_association, series.released_at = "1-1", now
        series.last_received_at = now - dt.timedelta(seconds=1)


def _job(sessions, package) -> int:
    with sessions.begin() as s:
        series = s.query(Series).one()
        series.state = "complete"
        s.add(Job(series=series, model_name="dicom-ai-test-lung", model_version="2.0.0", model_path=str(package)))
    job_id = claim_next_job(sessions, "w")
    assert job_id is not None
    return job_id


def test_a_released_series_is_read_ahead_and_its_job_uses_it(tmp_path, node, lidc_series):  # noqa: F811
    settings, sessions, store = node
    package = _package(tmp_path / "air", Air())
    runner = JobRunner(settings, sessions, store, name="w")
    assert not runner.prefetch()  # complete series: nothing to read ahead

    _released(sessions)
    with sessions.begin() as s:
        s.query(Series).one().modality = "MR"
    assert not runner.prefetch()  # no enabled model takes MR: no job will follow
    with sessions.begin() as s:
        s.query(Series).one().modality = "CT"
    assert runner.prefetch() and not runner.prefetch()  # read once
    ahead = _job(sessions, package)
    runner.run(ahead)
    fresh = _job(sessions, package)  # the same series again, read from its files
    runner.run(fresh)
    with sessions() as s:
        a, f = s.get(Job, ahead), s.get(Job, fresh)
        assert (a.state, f.state) == ("done", "done"), (a.reason, f.reason)
        assert a.timings.get("read_ahead") == 1 and "read_ahead" not in f.timings
        assert a.findings == f.findings and a.findings

    # read ahead, then a late instance: the job reads the 13 files itself
    _released(sessions)
    assert runner.prefetch()
    extra = sorted(lidc_series, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))[162]
    ds = pydicom.dcmread(extra)
    ds.PatientName = PATIENT_NAME
    file_and_index(sessions, store, ds, 13, patient_id="P9", patient_name=PATIENT_NAME, accession="ACC9")
    late = _job(sessions, package)
    runner.run(late)
    with sessions() as s:
        job = s.get(Job, late)
        assert job.state == "done" and "read_ahead" not in job.timings, job.reason
    assert runner._prefetched is None  # nothing kept after the job

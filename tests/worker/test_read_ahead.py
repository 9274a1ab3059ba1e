"""The idle worker reads a series whose sending association was just released, before its
completion signal fires; the job then uses that volume, and gives the same results as a job
that reads the files itself. A series that changed after it was read (a late instance) is read
again by its job; a series of a modality no enabled model takes is not read.

While a series arrives, the worker's incoming reader reads its files (not while the worker is
busy, not those of a modality no model takes); the job's volume takes those reads, except of
an instance received again since, and is the volume its files give."""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np
import pydicom

from dicom_ai.cache.db import Instance, Job, Series, utcnow
from dicom_ai.infer.incoming import IncomingReader
from dicom_ai.infer.volume import load_series
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


def _wait(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not read in time"
        time.sleep(0.05)


def test_a_series_is_read_as_it_arrives_and_its_job_uses_those_reads(tmp_path, node, lidc_series, caplog):  # noqa: F811
    settings, sessions, store = node
    package = _package(tmp_path / "air", Air())
    slice_bytes = 512 * 512 * 4
    with sessions.begin() as s:  # the series as the receiver leaves it while an association sends it
        series = s.query(Series).one()
        series.state, series.receiving_association, series.last_received_at = "receiving", "1-1", utcnow()

    ignoring = IncomingReader(sessions, store, lambda: {"MR"})  # no enabled model takes CT
    ignoring.start()
    try:
        time.sleep(1.0)
        assert ignoring.nbytes == 0
    finally:
        ignoring.stop()

    reader = IncomingReader(sessions, store, lambda: {"CT"})
    reader.start()
    try:
        _wait(lambda: reader.nbytes == 12 * slice_bytes)
        by_z = sorted(lidc_series, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
        with reader.paused():  # an instance arrives while the worker runs a job: not read then
            ds = pydicom.dcmread(by_z[162])
            ds.PatientName = PATIENT_NAME
            file_and_index(sessions, store, ds, 13, patient_id="P9", patient_name=PATIENT_NAME, accession="ACC9")
            time.sleep(1.0)
            assert reader.nbytes == 12 * slice_bytes
        _wait(lambda: reader.nbytes == 13 * slice_bytes)

        # instance 5 received again after it was read (a new file at the same path): its read is stale
        with sessions.begin() as s:
            again = s.query(Instance).filter_by(instance_number=5).one()
            again.received_at = utcnow()
            stale = store.abspath(again.path)
        ds = pydicom.dcmread(stale)
        arr = ds.pixel_array
        arr[:] = arr + 1
        ds.PixelData = arr.tobytes()
        ds.save_as(stale)

        runner = JobRunner(settings, sessions, store, name="w")
        runner.incoming = reader
        _released(sessions)
        with sessions.begin() as s:
            s.query(Series).one().receiving_association = None
        with caplog.at_level(logging.INFO, logger="dicom_ai.worker"):
            assert runner.prefetch()
        assert "(13 files, 12 read as they arrived)" in caplog.text
        assert reader.nbytes == 0  # the volume holds them now
        volume = runner._prefetched[1]
        files = load_series([store.abspath(i.path) for i in sessions().query(Instance).all()])
        assert np.array_equal(volume.array, files.array)  # instance 5 as its new file holds it
        ahead = _job(sessions, package)
        runner.run(ahead)
    finally:
        reader.stop()
    with sessions() as s:
        job = s.get(Job, ahead)
        assert job.state == "done" and job.timings.get("read_ahead") == 1, job.reason

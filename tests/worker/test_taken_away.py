"""A worker whose job was requeued while it ran (its heartbeat lapsed, another worker claimed
the job) commits none of its results: no result rows, no deliveries, the job left to the other
worker. Without this, a worker that comes back from a network partition would deliver a second
set of results."""

from __future__ import annotations

import datetime as dt

from dicom_ai.cache.db import Delivery, Job, Result, utcnow
from dicom_ai.cache.workers import requeue_lost_jobs
from dicom_ai.worker import JobRunner, claim_next_job

from .test_worker_plausibility import Air, _package, node  # noqa: F401  (node: the fixture)


def test_results_of_a_job_taken_away_are_not_committed(tmp_path, node, monkeypatch, caplog) -> None:  # noqa: F811
    settings, sessions, store = node
    package = _package(tmp_path / "air", Air())
    with sessions.begin() as s:
        from dicom_ai.cache.db import Series

        s.add(Job(series=s.query(Series).one(), model_name="dicom-ai-test-lung", model_version="2.0.0",
                  model_path=str(package)))
    job_id = claim_next_job(sessions, "partitioned")
    runner = JobRunner(settings, sessions, store, name="partitioned")
    real_segment = runner._segment

    def segment_then_lose_the_job(*args, **kwargs):
        out = real_segment(*args, **kwargs)  # the model has run; meanwhile the node gave up on us
        assert requeue_lost_jobs(sessions, 60, now=utcnow() + dt.timedelta(seconds=61)) == [job_id]
        assert claim_next_job(sessions, "other") == job_id
        return out

    monkeypatch.setattr(runner, "_segment", segment_then_lose_the_job)
    runner.run(job_id)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert (job.state, job.worker, job.attempts) == ("running", "other", 2), job.reason
        assert s.query(Result).count() == 0 and s.query(Delivery).count() == 0
    assert any("results are not kept" in r.getMessage() for r in caplog.records)

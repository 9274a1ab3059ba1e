"""The worker registry and job heartbeats, on both engines: what ``workers list`` shows, which
running jobs are requeued when their worker falls silent, and that a worker whose job was taken
back commits nothing of it."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from dicom_ai.cache.db import Job, Series, open_index, utcnow
from dicom_ai.cache.index import InstanceMeta, index_instance
from dicom_ai.cache.store import FileStore
from dicom_ai.cache.workers import (
    MAX_ATTEMPTS,
    heartbeat,
    register,
    requeue_jobs_of,
    requeue_jobs_of_ended_workers,
    requeue_lost_jobs,
    stopped,
    workers,
)
from dicom_ai.config import load_settings
from dicom_ai.lifetime import this_host
from dicom_ai.worker import JobRunner, claim_next_job

CT = "1.2.840.10008.5.1.4.1.1.2"


def _jobs(sessions, n: int) -> list[int]:
    meta = InstanceMeta("P", "N", "1.2.3", "", "", "", "1.2.3.4", "CT", "", "", 1, CT, "1.2.3.4.5", 1,
                        "1.2.840.10008.1.2")
    index_instance(sessions, meta, "missing.dcm", 1, "A")
    with sessions.begin() as s:
        series = s.query(Series).one()
        jobs = [Job(series=series, model_name="m", model_version="1", model_path="/m") for _ in range(n)]
        s.add_all(jobs)
        s.flush()
        return [j.id for j in jobs]


def test_the_registry_shows_busy_idle_lost_and_stopped_workers(index_url):
    sessions = open_index(index_url)
    (job_id,) = _jobs(sessions, 1)
    for name in ("a", "b", "c", "d"):
        register(sessions, name, "gpu-host-1" if name < "c" else "cpu-host-2", 100, "cuda", ["gpu"])
    assert claim_next_job(sessions, "a") == job_id
    heartbeat(sessions, "a", job_id)
    stopped(sessions, "d")
    now = utcnow()
    heartbeat(sessions, "b", None)
    later = now + dt.timedelta(seconds=30)
    heartbeat(sessions, "c", None)  # c falls silent from here
    view = {w.name: w for w in workers(sessions, 60, now=later)}
    assert {n: (w.state, w.job_id) for n, w in view.items()} == {
        "a": ("busy", job_id), "b": ("idle", None), "c": ("idle", None), "d": ("stopped", None)}
    assert view["a"].host == "gpu-host-1" and view["a"].queues == ["gpu"] and view["a"].device == "cuda"
    assert 29 < view["a"].heartbeat_age < 31
    assert {w.name: w.state for w in workers(sessions, 60, now=later + dt.timedelta(seconds=40))} == {
        "a": "lost", "b": "lost", "c": "lost", "d": "stopped"}
    with sessions() as s:
        assert s.get(Job, job_id).worker == "a"


def test_running_jobs_whose_worker_fell_silent_are_requeued_then_failed(index_url):
    sessions = open_index(index_url)
    silent, alive = _jobs(sessions, 2)
    assert claim_next_job(sessions, "w1") == silent
    assert claim_next_job(sessions, "w2") == alive
    assert requeue_lost_jobs(sessions, 60) == []  # both heartbeats are fresh
    soon = utcnow() + dt.timedelta(seconds=61)
    heartbeat(sessions, "w2", alive)  # w2 keeps beating; nothing renews w1's job
    with sessions.begin() as s:  # w2's last beat is 30 s before the check
        s.get(Job, alive).heartbeat_at = soon - dt.timedelta(seconds=30)
    assert requeue_lost_jobs(sessions, 60, now=soon) == [silent]
    with sessions() as s:
        job = s.get(Job, silent)
        assert (job.state, job.heartbeat_at) == ("queued", None)
        assert job.reason == "requeued: worker w1 sent no heartbeat for 60 s"
        assert s.get(Job, alive).state == "running"
    with sessions.begin() as s:
        s.get(Job, alive).state = "done"
    # claimed and lost again and again: failed after MAX_ATTEMPTS claims, not requeued for ever
    for attempt in range(2, MAX_ATTEMPTS + 1):
        assert claim_next_job(sessions, f"w{attempt + 1}") == silent
        assert requeue_lost_jobs(sessions, 60, now=utcnow() + dt.timedelta(seconds=61)) == [silent]
    with sessions() as s:
        job = s.get(Job, silent)
        assert job.state == "failed" and job.attempts == MAX_ATTEMPTS
        assert job.reason.endswith(f"failed after {MAX_ATTEMPTS} attempts")


def test_the_jobs_of_a_worker_known_dead_are_requeued_at_once(index_url):
    sessions = open_index(index_url)
    mine, other = _jobs(sessions, 2)
    assert claim_next_job(sessions, "dead") == mine and claim_next_job(sessions, "alive") == other
    assert requeue_jobs_of(sessions, "dead", "died (exit code -9)") == [mine]
    with sessions() as s:
        assert s.get(Job, mine).reason == "requeued: worker dead died (exit code -9)"
        assert s.get(Job, other).state == "running"


@pytest.mark.integration  # starts a short process, for a pid that has ended
def test_at_a_start_only_jobs_of_workers_that_ended_on_this_host_are_requeued(index_url):
    """Nodes sharing the index: a starting node requeues the job of a worker of its host whose
    process has ended, and one claimed by no registered worker; it leaves the jobs of a live
    worker here and of a worker on another host to their heartbeats."""
    import subprocess

    sessions = open_index(index_url)
    ended_job, live_job, remote_job, nameless_job = _jobs(sessions, 4)
    ended = subprocess.Popen(["true"])
    ended.wait()
    register(sessions, "ended", this_host(), ended.pid, "cpu")
    register(sessions, "live", this_host(), os.getppid(), "cpu")
    register(sessions, "remote", "another-host", ended.pid, "cuda")
    for name in ("ended", "live", "remote", ""):
        claim_next_job(sessions, name)
    assert requeue_jobs_of_ended_workers(sessions) == [ended_job, nameless_job]
    with sessions() as s:
        assert {j.id: j.state for j in s.query(Job)} == {
            ended_job: "queued", live_job: "running", remote_job: "running", nameless_job: "queued"}
        assert s.get(Job, ended_job).reason == "requeued: its worker ended (the node restarted)"
    assert requeue_jobs_of_ended_workers(sessions) == []


def test_a_worker_whose_job_was_taken_back_commits_nothing_of_it(index_url, tmp_path):
    """Worker a's job is requeued (its heartbeat lapsed) and claimed by worker b; when a's run
    ends (here it fails: the series' file is missing) it must not write over b's claim."""
    settings = load_settings(None, node={"database_url": index_url, "data_dir": str(tmp_path / "var")},
                             worker={"device": "cpu"})
    sessions = open_index(index_url)
    (job_id,) = _jobs(sessions, 1)
    assert claim_next_job(sessions, "a") == job_id
    requeue_lost_jobs(sessions, 60, now=utcnow() + dt.timedelta(seconds=61))
    assert claim_next_job(sessions, "b") == job_id
    JobRunner(settings, sessions, FileStore(settings.node.data_dir), name="a").run(job_id)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert (job.state, job.worker, job.attempts) == ("running", "b", 2), job.reason
    JobRunner(settings, sessions, FileStore(settings.node.data_dir), name="b").run(job_id)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert (job.state, job.worker) == ("failed", "b") and "NoImageSlices" in job.reason, job.reason

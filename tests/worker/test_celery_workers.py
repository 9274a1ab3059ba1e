"""Inference workers on other hosts: a node with ``executor = "celery"``, a real Redis broker, a
real PostgreSQL index and two ``dicom-ai worker`` processes sharing the node's store.

Ten series are processed exactly once each, spread over both workers; a worker killed with
SIGKILL in the middle of a job loses nothing: the node requeues the job when the worker's
heartbeat lapses, sends it again, and the other worker runs it; its results are committed once.
"""

from __future__ import annotations

import time

import peers
import pgserver
import pytest
import redisserver
from conftest import require
from nodeproc import NodeProcess, WorkerProcess

from dicom_ai.cache.db import Job, Result, Worker

pytestmark = pytest.mark.integration

CRLM = "ct_abdomen_CRLM-CT-1006"


def _use_only(node: NodeProcess, model: str, other: str) -> None:
    assert node.cli("models", "disable", other, "--user", "admin").returncode == 0
    assert node.cli("models", "enable", model, "--user", "admin").returncode == 0
    assert node.wait_for_log(f"models now: {model}", 30), node.log_tail()


def test_two_celery_workers_run_each_job_once_and_survive_a_killed_worker(tmp_path, dcmtk, shared_data, postgres):
    require(redisserver.binary(), "redis-server")
    copies = [tmp_path / f"series{i}" for i in range(10)]
    for folder in copies:
        peers.copy_series(shared_data / CRLM / "image", folder)
    with redisserver.RedisServer() as redis:
        extra = {"node": {"executor": "celery", "database_url": postgres.database()},
                 "celery": {"broker_url": redis.url},
                 "worker": {"heartbeat_seconds": 1, "lost_after_seconds": 8, "preload_models": False}}
        # one association brings each series whole, so its A-RELEASE completes it
        with NodeProcess(tmp_path / "node", stable_seconds=30, extra=extra) as node:
            _use_only(node, "dicom-ai-body-region", "dicom-ai-lung")
            workers = {name: WorkerProcess(node, tmp_path / name, {"name": name}).start() for name in ("w1", "w2")}

            def logs() -> str:
                return node.log_tail() + "".join(f"\n--- {n}:\n{w.log_tail()}" for n, w in workers.items())

            try:
                peers.wait_for(lambda: all("ready." in w.log_tail(200) for w in workers.values()), 120,
                               "both workers consuming", logs)
                assert {w.name for w in node.rows(Worker)} == {"w1", "w2"}
                for folder in copies:
                    sent = peers.storescu("127.0.0.1", node.port, folder, aec=node.ae_title)
                    assert sent.returncode == 0, sent.stderr
                done = peers.wait_for(
                    lambda: (jobs := node.rows(Job)) and len(jobs) == 10
                    and all(j.state in ("done", "failed") for j in jobs) and jobs, 300, "ten jobs ended", logs)
                assert [(j.state, j.attempts) for j in done] == [("done", 1)] * 10, [j.reason for j in done]
                assert {j.worker for j in done} == {"w1", "w2"}, [j.worker for j in done]  # both took some
                results = node.rows(Result)
                assert sorted(r.job_fk for r in results) == sorted(j.id for j in done)  # one SR each

                # a worker killed with SIGKILL mid-job
                _use_only(node, "dicom-ai-lung", "dicom-ai-body-region")
                sent = peers.storescu("127.0.0.1", node.port, shared_data / "ct_chest_LIDC-IDRI-0314" / "image",
                                      aec=node.ae_title)
                assert sent.returncode == 0, sent.stderr
                (running,) = peers.wait_for(
                    lambda: [j for j in node.rows(Job) if j.state == "running" and j.model_name == "dicom-ai-lung"],
                    120, "the lung job running", logs, interval=0.2)
                workers[running.worker].kill()
                survivor = ({"w1", "w2"} - {running.worker}).pop()
                (lung,) = peers.wait_for(
                    lambda: [j for j in node.rows(Job) if j.id == running.id and j.state in ("done", "failed")],
                    240, "the lung job run again", logs)
                assert (lung.state, lung.attempts, lung.worker) == ("done", 2, survivor), lung.reason
                assert sorted(r.kind for r in node.rows(Result) if r.job_fk == lung.id) == ["SEG", "SR"]
                assert node.wait_for_log(f"jobs {lung.id} requeued: their worker sent no heartbeat", 5), logs()
                states = {w.name: w for w in node.rows(Worker)}
                listed = node.cli("workers", "list").stdout
                assert running.worker in listed and "lost" in listed, listed
                assert states[survivor].stopped_at is None
            finally:
                for w in workers.values():
                    w.stop()


def _get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_broker_outage_and_a_database_restart_lose_nothing(tmp_path, dcmtk, shared_data):
    """Redis stopped for 30 s: the node keeps receiving, the job waits in the index, /health and
    /metrics show the outage, and the job runs once Redis is back. PostgreSQL restarted: node and
    worker reconnect by themselves and the next series is processed."""
    require(redisserver.binary(), "redis-server")
    first, second = tmp_path / "first", tmp_path / "second"
    peers.copy_series(shared_data / CRLM / "image", first)
    peers.copy_series(shared_data / CRLM / "image", second)
    with redisserver.RedisServer() as redis, pgserver.PostgresServer() as pg:
        extra = {"node": {"executor": "celery", "database_url": pg.database()},
                 "celery": {"broker_url": redis.url},
                 "worker": {"heartbeat_seconds": 1, "lost_after_seconds": 10, "preload_models": False}}
        with NodeProcess(tmp_path / "node", stable_seconds=30, extra=extra) as node:
            _use_only(node, "dicom-ai-body-region", "dicom-ai-lung")
            worker = WorkerProcess(node, tmp_path / "w1", {"name": "w1"}).start()

            def logs() -> str:
                return f"{node.log_tail()}\n--- worker:\n{worker.log_tail()}"

            try:
                peers.wait_for(lambda: "ready." in worker.log_tail(200), 120, "the worker consuming", logs)
                assert _get(node.web_port, "/health") == (200, '{"status":"ok","broker":"up"}')

                redis.stop()
                down_at = time.monotonic()
                sent = peers.storescu("127.0.0.1", node.port, first, aec=node.ae_title)
                assert sent.returncode == 0, sent.stderr  # the node keeps receiving
                (waiting,) = peers.wait_for(lambda: node.rows(Job), 60, "the job queued", logs)
                assert node.wait_for_log("not reachable; jobs wait in the index", 30), logs()
                status, body = _get(node.web_port, "/health")
                assert (status, body) == (200, '{"status":"degraded","broker":"down"}')
                assert "dicom_ai_broker_up 0.0" in _get(node.web_port, "/metrics")[1]
                time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
                (job,) = node.rows(Job)
                assert (job.state, job.dispatched_at) == ("queued", None)
                redis.start()  # same port, empty: nothing was held there
                (done,) = peers.wait_for(lambda: [j for j in node.rows(Job) if j.state in ("done", "failed")], 120,
                                         "the job run after the outage", logs)
                assert (done.id, done.state, done.attempts) == (waiting.id, "done", 1), done.reason
                assert node.wait_for_log("broker reachable again", 5), logs()
                assert "dicom_ai_broker_up 1.0" in _get(node.web_port, "/metrics")[1]

                pg.restart()  # every connection of the node and the worker is cut
                sent = peers.storescu("127.0.0.1", node.port, second, aec=node.ae_title)
                assert sent.returncode == 0, sent.stderr
                jobs = peers.wait_for(lambda: len(js := node.rows(Job)) == 2 and js[1].state in ("done", "failed")
                                      and js, 120, "the series after the restart", logs)
                assert [(j.state, j.attempts) for j in jobs] == [("done", 1), ("done", 1)], [j.reason for j in jobs]
                assert len(node.rows(Result)) == 2
                assert _get(node.web_port, "/health") == (200, '{"status":"ok","broker":"up"}')
            finally:
                worker.stop()

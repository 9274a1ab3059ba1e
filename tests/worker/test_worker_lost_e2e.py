"""A real node: its worker registers and beats (``workers list``, ``jobs show``, /metrics), and a
worker killed with SIGKILL in the middle of a job loses nothing: the node requeues the job, the
restarted worker runs it, and its results are committed once."""

from __future__ import annotations

import os
import signal
import urllib.request

import peers
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Job, Result, Worker

pytestmark = pytest.mark.integration


def test_a_worker_killed_mid_job_loses_nothing(tmp_path, dcmtk, shared_data):
    # a heartbeat lapse (10 s) comes later than the node seeing its worker process die (1 s)
    extra = {"worker": {"poll_seconds": 0.5, "heartbeat_seconds": 1, "lost_after_seconds": 10}}
    # one association brings the series whole, so its A-RELEASE completes it
    with NodeProcess(tmp_path / "node", stable_seconds=30, extra=extra) as node:
        # the body-region classifier: a job of a few seconds on the CPU
        assert node.cli("models", "disable", "dicom-ai-lung", "--user", "admin").returncode == 0
        assert node.cli("models", "enable", "dicom-ai-body-region", "--user", "admin").returncode == 0
        assert node.wait_for_log("models now: dicom-ai-body-region", 30), node.log_tail()
        assert node.wait_for_log("worker started", 60), node.log_tail()
        (first,) = peers.wait_for(lambda: node.rows(Worker), 30, "the worker registered", node.log_tail)
        listed = node.cli("workers", "list")
        assert listed.returncode == 0 and first.name in listed.stdout and "idle" in listed.stdout, listed.stdout
        assert first.host and first.pid and first.device == "cpu"

        sent = peers.storescu("127.0.0.1", node.port, shared_data / "ct_chest_LIDC-IDRI-0314" / "image",
                              aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        (running,) = peers.wait_for(lambda: [j for j in node.rows(Job) if j.state == "running"], 120,
                                    "the job running", node.log_tail, interval=0.2)
        assert running.worker == first.name
        os.kill(first.pid, signal.SIGKILL)

        done = peers.wait_for(lambda: [j for j in node.rows(Job) if j.state in ("done", "failed")], 240,
                              "the job run again", node.log_tail)
        assert [(j.state, j.attempts) for j in done] == [("done", 2)], [j.reason for j in done]
        assert done[0].worker != first.name
        assert [r.kind for r in node.rows(Result)] == ["SR"]  # one run's result, once
        assert node.wait_for_log(f"jobs {running.id} requeued: their worker died", 5), node.log_tail()
        shown = node.cli("jobs", "show", str(running.id)).stdout
        assert f"worker: {done[0].worker}" in shown, shown
        states = {w.name: w for w in node.rows(Worker)}
        assert set(states) == {first.name, done[0].worker}
        # the killed one shows lost once its heartbeat is 10 s old; its successor idle
        listed = peers.wait_for(lambda: (out := node.cli("workers", "list").stdout) and "lost" in out and out, 30,
                                "the killed worker listed as lost", node.log_tail)
        assert "idle" in listed, listed
        with urllib.request.urlopen(f"http://127.0.0.1:{node.web_port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert 'dicom_ai_workers{state="lost"} 1.0' in metrics and 'dicom_ai_workers{state="idle"} 1.0' in metrics
        assert f'dicom_ai_worker_heartbeat_age_seconds{{host="{first.host}",worker="{first.name}"}}' in metrics

"""The node wakes its idle worker when it queues a job, so a job does not wait for the worker's
next poll; and the worker wakes the node's outbox when it ends a job, so the results do not
wait for the outbox's next tick.

With ``[worker] poll_seconds`` at an hour, the job of a series the node just found complete
must still run at once: only the wake-up can start it within the test's deadline. With
``[completion] check_interval_seconds`` at 12 s (the period of the outbox too), results sent
within a few seconds of their job's end can only have been sent by the wake-up.
"""

from __future__ import annotations

import peers
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Delivery, Job

pytestmark = pytest.mark.integration


def test_queued_job_wakes_an_idle_worker(tmp_path, dcmtk, shared_data):
    # one association brings the series whole, so its A-RELEASE completes it; the idle timer is
    # only the fallback, long enough that a stall of the machine mid-send cannot close it early
    with NodeProcess(tmp_path / "node", stable_seconds=30, extra={"worker": {"poll_seconds": 3600}}) as node:
        # the body-region classifier is quick on the CPU; the lung model stays out of the way
        assert node.cli("models", "disable", "dicom-ai-lung", "--user", "admin").returncode == 0
        assert node.cli("models", "enable", "dicom-ai-body-region", "--user", "admin").returncode == 0
        assert node.wait_for_log("models now: dicom-ai-body-region", 30), node.log_tail()
        assert node.wait_for_log("worker started", 60), node.log_tail()  # idle, waiting an hour

        sent = peers.storescu("127.0.0.1", node.port, shared_data / "ct_abdomen_CRLM-CT-1006" / "image",
                              aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        done = peers.wait_for(lambda: [j for j in node.rows(Job) if j.state in ("done", "failed")], 120,
                              "the job, without waiting for the worker's next poll", node.log_tail)
        assert [j.state for j in done] == ["done"], [j.reason for j in done]


def test_an_ended_job_wakes_the_outbox(tmp_path, dcmtk, shared_data, orthanc):
    dest = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    # one association brings the series whole, so its A-RELEASE completes it; the idle timer is
    # only the fallback, long enough that a stall of the machine mid-send cannot close it early
    with NodeProcess(tmp_path / "node", stable_seconds=30, destinations=dest,
                     extra={"completion": {"check_interval_seconds": 12}}) as node:
        assert node.cli("models", "disable", "dicom-ai-lung", "--user", "admin").returncode == 0
        assert node.cli("models", "enable", "dicom-ai-body-region", "--user", "admin").returncode == 0
        assert node.wait_for_log("models now: dicom-ai-body-region", 60), node.log_tail()
        sent = peers.storescu("127.0.0.1", node.port, shared_data / "ct_abdomen_CRLM-CT-1006" / "image",
                              aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        delivered = peers.wait_for(
            lambda: [d for d in node.rows(Delivery) if d.state == "delivered"], 120,
            "the SR delivered", node.log_tail)
        (job,) = node.rows(Job)
        assert job.state == "done", job.reason
        # the outbox's next tick would come up to 12 s after the job's end
        assert (delivered[0].delivered_at - job.finished_at).total_seconds() < 5, node.log_tail()
        assert len(orthanc.get("/instances")) == 1

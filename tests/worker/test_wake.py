"""The node wakes its idle worker when it queues a job, so a job does not wait for the worker's
next poll.

With ``[worker] poll_seconds`` at an hour, the job of a series the node just found complete
must still run at once: only the wake-up can start it within the test's deadline.
"""

from __future__ import annotations

import peers
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Job

pytestmark = pytest.mark.integration


def test_queued_job_wakes_an_idle_worker(tmp_path, dcmtk, shared_data):
    with NodeProcess(tmp_path / "node", stable_seconds=1, extra={"worker": {"poll_seconds": 3600}}) as node:
        # the body-region classifier is quick on the CPU; the lung model stays out of the way
        assert node.cli("models", "disable", "dicom-ai-lung", "--user", "admin").returncode == 0
        assert node.cli("models", "enable", "dicom-ai-body-region", "--user", "admin").returncode == 0
        assert node.wait_for_log("models now: dicom-ai-body-region", 30), node.log_tail()
        assert node.wait_for_log("worker started", 60), node.log_tail()  # idle, waiting an hour

        sent = peers.storescu("127.0.0.1", node.port, shared_data / "ct_chest_LIDC-IDRI-0314" / "image",
                              aec=node.ae_title)
        assert sent.returncode == 0, sent.stderr
        done = peers.wait_for(lambda: [j for j in node.rows(Job) if j.state in ("done", "failed")], 120,
                              "the job, without waiting for the worker's next poll", node.log_tail)
        assert [j.state for j in done] == ["done"], [j.reason for j in done]

"""Two receiving nodes sharing one PostgreSQL index and one instance store, as two hosts would
(a shared POSIX path): a series whose halves arrive at different nodes is processed once,
whole, and its result is delivered once; a node killed and restarted while the other receives
and works leaves the other's instances, jobs and deliveries alone."""

from __future__ import annotations

import threading

import peers
import pydicom
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Delivery, Instance, Job, Result

pytestmark = pytest.mark.integration

CRLM = "ct_abdomen_CRLM-CT-1006"


def test_two_nodes_share_one_index_and_store(tmp_path, dcmtk, shared_data, postgres, orthanc):
    first = peers.copy_series(shared_data / CRLM / "image", tmp_path / "first")
    second = peers.copy_series(shared_data / "ct_chest_LIDC-IDRI-0314" / "image", tmp_path / "second")
    store = tmp_path / "store"  # both nodes' data_dir: the shared path
    extra = {"node": {"database_url": postgres.database(), "data_dir": str(store)}}
    dest = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    # the halves of one series come from two associations, so the idle timer completes it
    a = NodeProcess(tmp_path / "a", destinations=dest, stable_seconds=6, extra=extra)
    b = NodeProcess(tmp_path / "b", destinations=dest, stable_seconds=6, extra=extra)
    with a, b:
        # one model registry for both (in the shared store and index): the quick classifier only
        assert a.cli("models", "disable", "dicom-ai-lung", "--user", "admin").returncode == 0
        assert a.cli("models", "enable", "dicom-ai-body-region", "--user", "admin").returncode == 0
        assert a.wait_for_log("models now: dicom-ai-body-region", 30) and b.wait_for_log(
            "models now: dicom-ai-body-region", 30), a.log_tail() + b.log_tail()

        def logs() -> str:
            return f"--- a:\n{a.log_tail()}\n--- b:\n{b.log_tail()}"

        sends = [threading.Thread(target=lambda n=n, f=f: outcomes.append(
            peers.storescu("127.0.0.1", n.port, f, aec=n.ae_title).returncode)) for n, f in
            ((a, first[:25]), (b, first[25:]))]
        outcomes: list[int] = []
        for t in sends:
            t.start()
        for t in sends:
            t.join()
        assert outcomes == [0, 0], logs()
        (job,) = peers.wait_for(lambda: [j for j in a.rows(Job) if j.state in ("done", "failed")], 120,
                                "the first job ended", logs)
        assert (job.state, job.attempts) == ("done", 1), job.reason
        assert "series %s complete (51 images" % pydicom.dcmread(first[0]).SeriesInstanceUID in (
            a.log_path.read_text() + b.log_path.read_text())
        # its result delivered first, by whichever node's outbox took it: the kill below is to hit
        # b while a works, not a delivery of b's own in flight (that case is the outbox's tests')
        peers.wait_for(lambda: (ds := a.rows(Delivery)) and all(d.state == "delivered" for d in ds),
                       60, "the first delivery delivered", logs)

        # b killed, and started again while a receives the second series (275 images, some
        # seconds): b's start-up sweep of the store runs while a writes into it
        b.kill()
        sending = threading.Thread(target=lambda: outcomes.append(
            peers.storescu("127.0.0.1", a.port, second, aec=a.ae_title).returncode))
        sending.start()
        b.start()
        sending.join()
        assert outcomes[-1] == 0, logs()
        jobs = peers.wait_for(lambda: len(js := [j for j in a.rows(Job) if j.state in ("done", "failed")]) == 2
                              and js, 120, "the second job ended", logs)
        assert [(j.state, j.attempts) for j in jobs] == [("done", 1)] * 2, [j.reason for j in jobs]
        delivered = peers.wait_for(lambda: (ds := a.rows(Delivery)) and all(d.state == "delivered" for d in ds)
                                   and ds, 60, "every delivery delivered", logs)
        instances, results = a.rows(Instance), a.rows(Result)
    assert [d.attempts for d in delivered] == [1, 1], [d.last_status for d in delivered]
    assert len(instances) == 51 + 275 and all((store / i.path).is_file() for i in instances)
    assert not peers.leftover_temporaries(store)
    assert len(results) == 2  # the classifier's SR of each series
    at_pacs = [i["sop_instance_uid"] for f in (first, second)
               for i in orthanc.instances_of_study(pydicom.dcmread(f[0]).StudyInstanceUID)]
    assert sorted(at_pacs) == sorted(r.sop_instance_uid for r in results)  # each once, whichever node sent it
    assert "orphan" not in a.log_path.read_text() + b.log_path.read_text()

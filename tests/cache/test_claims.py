"""Workers and outboxes claiming at the same moment each get different rows, on both engines:
every queued job runs once and every delivery is sent once."""

from __future__ import annotations

import threading
from pathlib import Path

from dicom_ai.cache.db import Delivery, Job, Result, Series, open_index
from dicom_ai.cache.index import InstanceMeta, index_instance
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.export.outbox import deliver_due
from dicom_ai.worker import claim_next_job

CT = "1.2.840.10008.5.1.4.1.1.2"
THREADS = 4


def _series(sessions) -> None:
    meta = InstanceMeta("P", "N", "1.2.3", "", "", "", "1.2.3.4", "CT", "", "", 1, CT, "1.2.3.4.5", 1,
                        "1.2.840.10008.1.2")
    index_instance(sessions, meta, "x.dcm", 1, "A")


def _race(work) -> list:
    """Run ``work()`` on THREADS threads started together; returns what each returned."""
    start, out, errors = threading.Barrier(THREADS), [], []

    def run() -> None:
        start.wait()
        try:
            out.append(work())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    return out


def test_concurrent_workers_claim_each_job_once(index_url):
    sessions = open_index(index_url)
    _series(sessions)
    with sessions.begin() as s:
        series = s.query(Series).one()
        s.add_all(Job(series=series, model_name="m", model_version="1", model_path="/m") for _ in range(40))

    def claim_all() -> list[int]:
        mine = []
        while (job_id := claim_next_job(sessions)) is not None:
            mine.append(job_id)
        return mine

    claimed = [job for mine in _race(claim_all) for job in mine]
    with sessions() as s:
        ids = [j.id for j in s.query(Job)]
        assert sorted(claimed) == sorted(ids)  # all of them, none twice
        assert {(j.state, j.attempts) for j in s.query(Job)} == {("running", 1)}


def test_concurrent_outboxes_send_each_delivery_once(index_url, tmp_path: Path):
    settings = load_settings(None, node={"database_url": index_url, "data_dir": str(tmp_path / "var")},
                             destinations=[{"name": "f", "kind": "folder", "path": str(tmp_path / "out")}])
    sessions, store = open_index(index_url), FileStore(settings.node.data_dir)
    _series(sessions)
    with sessions.begin() as s:
        job = Job(series=s.query(Series).one(), model_name="m", model_version="1", model_path="/m", state="done")
        for i in range(30):
            rel = store.result_relpath(1, "SR", i + 1)
            store.write(rel, b"x" * 200)
            s.add(Delivery(destination="f", result=Result(
                job=job, kind="SR", sop_class_uid=CT, sop_instance_uid=f"1.2.3.4.5.6.{i}",
                series_instance_uid="1.2.3.4.5.6", path=rel)))

    sent = _race(lambda: deliver_due(sessions, store, settings))
    assert sum(sent) == 30
    with sessions() as s:
        assert {(d.state, d.attempts) for d in s.query(Delivery)} == {("delivered", 1)}


def test_concurrent_completion_ticks_queue_each_series_once(index_url, monkeypatch):
    """Nodes sharing one index run their completion ticks at the same moment: one job per series
    (the second tick's write waits for the first one's commit, then finds its job queued). Each
    tick is held 0.5 s after it has read the receiving series, so they overlap for sure."""
    import datetime as dt
    import time

    from dicom_ai.config import load_settings
    from dicom_ai.schedule import completion as completion_module
    from dicom_ai.schedule.completion import schedule_complete_series
    from dicom_ai.schedule.routing import routes

    signal = completion_module.completion_signal

    def slow_signal(*args, **kwargs):
        time.sleep(0.5)
        return signal(*args, **kwargs)

    monkeypatch.setattr(completion_module, "completion_signal", slow_signal)

    from ..schedule.test_rules import _model

    sessions = open_index(index_url)
    _series(sessions)
    got = routes(load_settings(None), [_model(min_slices=1)])
    completion = load_settings(None, completion={"stable_seconds": 0.01}).completion
    created = _race(lambda: schedule_complete_series(sessions, got, completion, {CT}, now=dt.datetime(2100, 1, 1)))
    with sessions() as s:
        assert s.query(Job).count() == 1 and sum(len(c) for c in created) == 1

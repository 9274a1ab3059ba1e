import datetime as dt
from collections import namedtuple

from dicom_ai.cache.db import Delivery, Instance, Job, Result, Series, open_index, utcnow
from dicom_ai.cache.index import InstanceMeta, index_instance
from dicom_ai.cache.retention import apply_retention
from dicom_ai.cache.store import FileStore

CT = "1.2.840.10008.5.1.4.1.1.2"
Usage = namedtuple("Usage", "total used free")


def _series(sessions, store, uid: str, age_days: float, state: str | None = "complete") -> int:
    for i in range(3):
        meta = InstanceMeta("P", "N", "1.2.9", "", "", "", uid, "CT", "", "", 1, CT, f"{uid}.{i}", i,
                            "1.2.840.10008.1.2")
        rel = store.instance_relpath("1.2.9", uid, f"{uid}.{i}")
        store.write(rel, b"x" * 100)
        index_instance(sessions, meta, rel, 100, "A")
    with sessions.begin() as s:
        series = s.query(Series).filter_by(series_instance_uid=uid).one()
        if state is not None:
            series.state = state
        series.last_received_at = utcnow() - dt.timedelta(days=age_days)
        return series.id


def _job(sessions, store, series_id: int, job_state: str, delivery_state: str | None) -> None:
    with sessions.begin() as s:
        job = Job(series_fk=series_id, model_name="m", model_version="1", model_path="/m", state=job_state)
        s.add(job)
        if delivery_state:
            rel = f"results/{series_id}/seg.dcm"
            store.write(rel, b"seg")
            result = Result(job=job, kind="SEG", sop_class_uid="1.2", sop_instance_uid=f"9.{series_id}",
                            series_instance_uid="9.9", path=rel)
            s.add(Delivery(result=result, destination="pacs", state=delivery_state))


def test_age_rule_spares_pending_work(index_url, tmp_path):
    store = FileStore(tmp_path)
    sessions = open_index(index_url)
    old_done = _series(sessions, store, "1.2.1", 40)
    _job(sessions, store, old_done, "done", "delivered")
    old_pending_delivery = _series(sessions, store, "1.2.2", 40)
    _job(sessions, store, old_pending_delivery, "done", "pending")
    old_queued = _series(sessions, store, "1.2.3", 40)
    _job(sessions, store, old_queued, "queued", None)
    old_receiving = _series(sessions, store, "1.2.4", 40, state="receiving")
    recent = _series(sessions, store, "1.2.5", 1)

    removed = apply_retention(sessions, store, max_age_days=30, max_disk_percent=0)
    assert removed == [old_done]
    with sessions() as s:
        assert s.get(Series, old_done).state == "purged"
        assert s.query(Instance).filter_by(series_fk=old_done).count() == 0
        assert s.query(Job).filter_by(series_fk=old_done).count() == 1  # history kept
        for sid in (old_pending_delivery, old_queued, old_receiving, recent):
            assert s.query(Instance).filter_by(series_fk=sid).count() == 3
    assert not (tmp_path / "instances" / "1.2.9" / "1.2.1").exists() or not any(
        (tmp_path / "instances" / "1.2.9" / "1.2.1").iterdir())
    assert not (tmp_path / f"results/{old_done}/seg.dcm").exists()
    assert (tmp_path / f"results/{old_pending_delivery}/seg.dcm").exists()


def test_disk_rule_removes_oldest_first_until_below(index_url, tmp_path):
    store = FileStore(tmp_path)
    sessions = open_index(index_url)
    oldest = _series(sessions, store, "1.3.1", 5)
    middle = _series(sessions, store, "1.3.2", 4)
    newest = _series(sessions, store, "1.3.3", 3)
    calls = []

    def usage(_root):
        calls.append(1)
        return Usage(100, 95 if len(calls) <= 2 else 80, 5)  # 95 % twice, then 80 %

    removed = apply_retention(sessions, store, max_age_days=0, max_disk_percent=85, disk_usage=usage)
    assert removed == [oldest, middle]
    with sessions() as s:
        assert s.get(Series, newest).state == "complete"


def test_a_purged_series_received_again_starts_afresh(index_url, tmp_path):
    store = FileStore(tmp_path)
    sessions = open_index(index_url)
    sid = _series(sessions, store, "1.4.1", 40)
    apply_retention(sessions, store, max_age_days=30, max_disk_percent=0)
    _series(sessions, store, "1.4.1", 0, state=None)  # the index sets the state
    with sessions() as s:
        assert s.get(Series, sid).state == "receiving"
        assert s.query(Instance).filter_by(series_fk=sid).count() == 3


def test_age_rule_spares_results_awaiting_review(index_url, tmp_path):
    """A job awaiting a clinician's review keeps its series (the reviewer looks at the images)
    and its held results; once decided, the series may go."""
    store = FileStore(tmp_path)
    sessions = open_index(index_url)
    held = _series(sessions, store, "1.2.6", 40)
    _job(sessions, store, held, "done", "held")
    with sessions.begin() as s:
        s.query(Job).filter_by(series_fk=held).one().review = "awaiting"
    assert apply_retention(sessions, store, max_age_days=30, max_disk_percent=0) == []
    with sessions.begin() as s:
        s.query(Job).filter_by(series_fk=held).one().review = "rejected"
        s.query(Delivery).one().state = "rejected"
    assert apply_retention(sessions, store, max_age_days=30, max_disk_percent=0) == [held]

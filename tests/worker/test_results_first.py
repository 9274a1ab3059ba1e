"""A segmentation job's results (SEG, SR and their deliveries) are committed and announced
before the files only the web page uses (the viewer's mask, the preview montage) are written,
so the outbox can send them meanwhile; those files follow, and a failure writing them leaves
the job done."""

from __future__ import annotations

from dicom_ai.cache.db import Delivery, Job, Result
from dicom_ai.worker import JobRunner

from .test_worker_plausibility import Air, _package, node  # noqa: F401  (node: the fixture)


def _job(sessions, package) -> int:
    from dicom_ai.cache.db import Series

    with sessions.begin() as s:
        job = Job(series=s.query(Series).one(), model_name="dicom-ai-test-lung", model_version="2.0.0",
                  model_path=str(package), state="running")
        s.add(job)
        s.flush()
        return job.id


def test_results_are_announced_before_the_viewer_files(tmp_path, node) -> None:  # noqa: F811
    settings, sessions, store = node
    job_id = _job(sessions, _package(tmp_path / "air", Air()))
    seen: dict = {}

    def on_results() -> None:
        with sessions() as s:
            job = s.get(Job, job_id)
            seen["state"] = job.state
            seen["results"] = sorted(r.kind for r in s.query(Result))
            seen["deliveries"] = s.query(Delivery).count()
        seen["files"] = [store.abspath(store.result_relpath(job_id, k)).exists() for k in ("SEG", "SR")]
        seen["mask"] = store.abspath(f"results/{job_id}/mask.npz").exists()
        seen["preview"] = store.abspath(f"results/{job_id}/preview.png").exists()

    JobRunner(settings, sessions, store, on_results=on_results).run(job_id)
    assert seen == {"state": "done", "results": ["SEG", "SR"], "deliveries": 2, "files": [True, True],
                    "mask": False, "preview": False}
    assert store.abspath(f"results/{job_id}/mask.npz").exists()
    assert store.abspath(f"results/{job_id}/preview.png").exists()
    with sessions() as s:
        timings = s.get(Job, job_id).timings
    assert {"load", "inference", "report", "total", "preview"} <= set(timings)


def test_a_failed_viewer_file_leaves_the_job_done(tmp_path, node, monkeypatch, caplog) -> None:  # noqa: F811
    settings, sessions, store = node
    job_id = _job(sessions, _package(tmp_path / "air", Air()))

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("dicom_ai.worker.write_preview_png", broken)
    JobRunner(settings, sessions, store).run(job_id)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert (job.state, s.query(Delivery).count()) == ("done", 2), job.reason
    assert f"job {job_id}: viewer files not written: disk full" in caplog.text
    assert not store.abspath(f"results/{job_id}/preview.png").exists()

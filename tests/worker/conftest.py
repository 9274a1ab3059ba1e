"""Helpers of the worker tests."""

from __future__ import annotations

import pydicom

from dicom_ai.cache.index import InstanceMeta, index_instance
from dicom_ai.cache.store import FileStore

CT = "1.2.840.10008.5.1.4.1.1.2"


def file_and_index(sessions, store: FileStore, ds: pydicom.Dataset, number: int, *, patient_id: str,
                   patient_name: str, accession: str) -> None:
    """Write ``ds`` into the store and index it as instance ``number`` of its series (a CT
    chest study of 2024-04-01 from AE ``CT1``), as the receiver files an instance."""
    meta = InstanceMeta(patient_id, patient_name, str(ds.StudyInstanceUID), "20240401", accession, "CT CHEST",
                        str(ds.SeriesInstanceUID), "CT", "CHEST", "axial", 1, CT, str(ds.SOPInstanceUID),
                        number, str(ds.file_meta.TransferSyntaxUID))
    rel = store.instance_relpath(meta.study_uid, meta.series_uid, meta.sop_instance_uid)
    store.abspath(rel).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(store.abspath(rel), enforce_file_format=True)
    index_instance(sessions, meta, rel, store.abspath(rel).stat().st_size, "CT1")


def run_test_job(settings, sessions, store: FileStore, package, *, review: str = "") -> int:
    """Mark the index's only series complete, run the test lung model ``package`` on it with the
    real :class:`~dicom_ai.worker.JobRunner` (``review``: the job's review state), check the job
    is done, and return its id."""
    from dicom_ai.cache.db import Job, Series
    from dicom_ai.worker import JobRunner

    with sessions.begin() as s:
        series = s.query(Series).one()
        series.state = "complete"
        job = Job(series=series, model_name="dicom-ai-test-lung", model_version="2.0.0",
                  model_path=str(package), state="running", review=review)
        s.add(job)
        s.flush()
        job_id = job.id
    JobRunner(settings, sessions, store).run(job_id)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job.state == "done", job.reason
    return job_id

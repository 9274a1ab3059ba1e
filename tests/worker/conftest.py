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

"""The worker runs the shipped model in the precision ``[worker] reduced_precision`` and the
CPU allow, and its SEG and SR say which (Algorithm Parameters) under UIDs of their own."""

from __future__ import annotations

import pydicom
import pytest
import torch

from dicom_ai.config import default_model_path
from dicom_ai.infer.runtimes.base import native_autocast

from .conftest import run_test_job
from .test_worker_plausibility import node  # noqa: F401  (the fixture: 12 real LIDC slices)


def _seg_of_a_job(settings, sessions, store) -> pydicom.Dataset:
    job_id = run_test_job(settings, sessions, store, default_model_path())
    return pydicom.dcmread(store.abspath(store.result_relpath(job_id, "SEG")))


@pytest.mark.skipif(not native_autocast(torch.device("cpu")), reason="this CPU has no native bfloat16")
def test_reduced_precision_is_on_by_default_and_recorded(node) -> None:  # noqa: F811
    settings, sessions, store = node
    assert settings.worker.reduced_precision
    b16 = _seg_of_a_job(settings, sessions, store)
    off = settings.model_copy(update={"worker": settings.worker.model_copy(update={"reduced_precision": False})})
    f32 = _seg_of_a_job(off, sessions, store)
    params = {str(i.SegmentationAlgorithmIdentificationSequence[0].get("AlgorithmParameters", ""))
              for i in b16.SegmentSequence}
    assert params == {"precision=bfloat16"}
    assert all("AlgorithmParameters" not in i.SegmentationAlgorithmIdentificationSequence[0]
               for i in f32.SegmentSequence)
    assert b16.SOPInstanceUID != f32.SOPInstanceUID and b16.SeriesInstanceUID == f32.SeriesInstanceUID

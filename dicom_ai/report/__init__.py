"""Result objects of a model run: DICOM SEG and TID 1500 SR (highdicom), measurements, preview.

- :func:`build_seg`: BINARY Segmentation, one segment per label (PS3.3 A.51, C.8.20).
- :func:`build_sr`: Comprehensive 3D SR with a TID 1500 Measurement Report (PS3.16).
- :func:`measure_labels`: voxel count, volume (mL), mean/std intensity per label.
- :func:`check_plausibility`: the result against the manifest's plausible ranges
  (:mod:`dicom_ai.report.plausibility`).
- :func:`write_preview_png`: PNG montage of a few slices with the segments overlaid.
- :mod:`dicom_ai.report.uids`: deterministic Series/SOP Instance UIDs of results.
- :mod:`dicom_ai.report.findings`: a job's findings in one line (worklist, log, CLI).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each name of :data:`__all__` is defined. They are imported on first use (PEP 562), so
#: that importing one light submodule (:mod:`dicom_ai.report.findings`) does not load highdicom.
_SOURCES = {
    "LabelMeasurement": "measure",
    "PlausibilityIssue": "plausibility",
    "build_seg": "seg",
    "build_sr": "sr",
    "check_plausibility": "plausibility",
    "measure_labels": "measure",
    "result_instance_uid": "uids",
    "result_series_uid": "uids",
    "write_preview_png": "preview",
}

__all__ = [
    "LabelMeasurement",
    "PlausibilityIssue",
    "build_seg",
    "build_sr",
    "check_plausibility",
    "measure_labels",
    "result_instance_uid",
    "result_series_uid",
    "write_preview_png",
]


def __getattr__(name: str) -> Any:
    """The name of :data:`__all__` from its submodule (PEP 562).

    Raises
    ------
    AttributeError
        If ``name`` is not one of them (nor a submodule already imported).
    """
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value

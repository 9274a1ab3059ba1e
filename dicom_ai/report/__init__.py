"""Result objects of a model run: DICOM SEG and TID 1500 SR (highdicom), measurements, preview.

- :func:`build_seg`: BINARY Segmentation, one segment per label (PS3.3 A.51, C.8.20).
- :func:`build_sr`: Comprehensive 3D SR with a TID 1500 Measurement Report (PS3.16).
- :func:`measure_labels`: voxel count, volume (mL), mean/std intensity per label.
- :func:`check_plausibility`: the result against the manifest's plausible ranges
  (:mod:`dicom_ai.report.plausibility`).
- :func:`write_preview_png`: PNG montage of a few slices with the segments overlaid.
- :mod:`dicom_ai.report.uids`: deterministic Series/SOP Instance UIDs of results.
"""

from dicom_ai.report.measure import LabelMeasurement, measure_labels
from dicom_ai.report.plausibility import PlausibilityIssue, check_plausibility
from dicom_ai.report.preview import write_preview_png
from dicom_ai.report.seg import build_seg
from dicom_ai.report.sr import build_sr
from dicom_ai.report.uids import result_instance_uid, result_series_uid

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

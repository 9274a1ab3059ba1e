"""Scoring models against references: what a user names as a series
(:mod:`~dicom_ai.evaluate.series`), reference segmentations read onto its grid
(:mod:`~dicom_ai.evaluate.reference`), MONAI metrics with bootstrap confidence intervals
(:mod:`~dicom_ai.evaluate.metrics`), and dataset evaluations with their reports
(:mod:`~dicom_ai.evaluate.run`)."""

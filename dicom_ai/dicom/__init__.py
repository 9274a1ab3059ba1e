"""DICOM header facts and image-plane geometry, below every other layer.

- :mod:`dicom_ai.dicom.header`: attribute values read from a data set (IS and DS values,
  PS3.5 6.2), Image Type and localizers, and the per-instance facts the index keeps.
- :mod:`dicom_ai.dicom.geometry`: the image plane (PS3.3 C.7.6.2.1.1): row, column and slice
  normal directions, and the anatomical orientation of a slice.

Nothing here imports another ``dicom_ai`` package.
"""

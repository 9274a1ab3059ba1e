"""Training of dicom-ai models: the shared optimisation loop (:mod:`~dicom_ai.train.loop`), the
segmentation trainers (:mod:`~dicom_ai.train.segmentation`), the package writer
(:mod:`~dicom_ai.train.package`), one module per recipe (:mod:`~dicom_ai.train.lung`,
:mod:`~dicom_ai.train.region`) and training on a site's own dataset
(:mod:`~dicom_ai.train.dataset`). Scoring lives in :mod:`dicom_ai.evaluate`.
"""

"""Training and evaluation of dicom-ai models (labels, data, augmentation, loss, metrics).

Public API: :func:`train_lung_model`, :func:`evaluate_model` (also ``python -m dicom_ai.train``).
"""

from __future__ import annotations

from dicom_ai.train.evaluate import evaluate_model
from dicom_ai.train.loop import train_lung_model

__all__ = ["evaluate_model", "train_lung_model"]

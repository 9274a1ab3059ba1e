"""Metrics of a model against references, computed by MONAI (``monai.metrics``).

Segmentation, per label and case (:func:`segmentation_metrics`): Dice (Dice 1945), the 95th
percentile Hausdorff distance and the symmetric mean surface distance in mm (surface voxels,
Euclidean distance, the volume's voxel spacing), and the volume difference in % of the
reference. Classification over cases (:func:`classification_metrics`): accuracy, and per class
sensitivity (recall), specificity, precision, F1 and ROC AUC (one class against the rest), with
the confusion matrix. Summaries carry a bootstrap 95 % confidence interval over cases
(:func:`bootstrap_ci`, percentile method, Efron & Tibshirani 1993).
"""

from __future__ import annotations

import math
import warnings
from typing import cast

import numpy as np
import torch


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, float]:
    """Dice coefficient per label value (``monai.metrics.DiceMetric`` on one-hot masks).

    Parameters
    ----------
    pred, ref:
        Integer label arrays of the same shape.
    labels:
        Label values to score.

    Returns
    -------
    dict
        label value -> Dice in [0, 1] (1.0 when both are empty).
    """
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    out: dict[int, float] = {}
    for v in labels:
        p = torch.from_numpy(np.asarray(pred) == v)[None, None].float()
        r = torch.from_numpy(np.asarray(ref) == v)[None, None].float()
        if not p.any() and not r.any():
            out[v] = 1.0
            continue
        out[v] = float(cast(torch.Tensor, metric(p, r))[0, 0])  # MONAI annotates a union
    return out


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]) -> tuple[float | None, float | None]:
    """95th-percentile Hausdorff distance and symmetric mean surface distance (mm) of two
    boolean masks (slices, rows, columns) with voxel ``spacing`` (mm, same order).

    Both are computed by MONAI on the bounding box of the two masks (plus one voxel), which
    gives the same distances as the whole volume. None when either mask is empty.
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() or not ref.any():
        return None, None
    both = np.argwhere(pred | ref)
    lo = np.maximum(both.min(0) - 1, 0)
    hi = both.max(0) + 2
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=False))
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks, handled above
        hd95 = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing))[0, 0])
        msd = float(compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                     spacing=list(spacing))[0, 0])
    return _finite(hd95), _finite(msd)


def segmentation_metrics(pred: np.ndarray, ref: np.ndarray, value: int, spacing: tuple[float, float, float]) -> dict:
    """All segmentation metrics of one label value on one case.

    Parameters
    ----------
    pred, ref:
        Integer label masks (slices, rows, columns) on one grid.
    value:
        The label value.
    spacing:
        Voxel spacing (slices, rows, columns) in mm.

    Returns
    -------
    dict
        ``dice``, ``hd95_mm``, ``msd_mm``, ``volume_ml``, ``reference_ml``,
        ``volume_difference_pct`` ((predicted - reference) / reference x 100; None for an
        empty reference).
    """
    p, r = np.asarray(pred) == value, np.asarray(ref) == value
    voxel_ml = float(np.prod(spacing)) / 1000.0
    vp, vr = float(p.sum()) * voxel_ml, float(r.sum()) * voxel_ml
    hd95, msd = surface_distances(p, r, spacing)
    return {
        "dice": round(dice_per_label(p.astype(np.uint8), r.astype(np.uint8), [1])[1], 4),
        "hd95_mm": None if hd95 is None else round(hd95, 2),
        "msd_mm": None if msd is None else round(msd, 2),
        "volume_ml": round(vp, 1),
        "reference_ml": round(vr, 1),
        "volume_difference_pct": round(100.0 * (vp - vr) / vr, 1) if vr > 0 else None,
    }


def bootstrap_ci(values: list[float], n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean of ``values`` (cases resampled
    with replacement ``n`` times). None for fewer than two values."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n, x.size))].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def summary(values: list[float | None]) -> dict:
    """Mean, median, min, max and bootstrap 95 % CI of the mean over cases (None skipped)."""
    x = [float(v) for v in values if v is not None]
    if not x:
        return {"n": 0}
    ci = bootstrap_ci(x)
    return {"n": len(x), "mean": round(float(np.mean(x)), 4), "median": round(float(np.median(x)), 4),
            "min": round(min(x), 4), "max": round(max(x), 4),
            "ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)]}


def classification_metrics(y_true: list[int], probabilities: list[list[float]], class_names: list[str]) -> dict:
    """Classification metrics over cases (MONAI ``get_confusion_matrix``,
    ``compute_confusion_matrix_metric``, ``compute_roc_auc``).

    Parameters
    ----------
    y_true:
        The reference class index of each case.
    probabilities:
        Per case, the model's probability of each class (cases x classes).
    class_names:
        Names in index order.

    Returns
    -------
    dict
        ``accuracy`` (with ``accuracy_ci95``, bootstrap over cases), ``per_class`` (name ->
        sensitivity, specificity, precision, f1, roc_auc; None where undefined, e.g. AUC
        of a class with no positive case) and ``confusion_matrix`` (rows: reference, columns:
        predicted).
    """
    from monai.metrics import compute_confusion_matrix_metric, compute_roc_auc, get_confusion_matrix

    n = len(class_names)
    prob = torch.tensor(probabilities, dtype=torch.float32).reshape(-1, n)
    truth = torch.tensor(y_true, dtype=torch.long)
    pred = prob.argmax(1)
    onehot_pred = torch.nn.functional.one_hot(pred, n).float()
    onehot_true = torch.nn.functional.one_hot(truth, n).float()
    cm = get_confusion_matrix(onehot_pred, onehot_true, include_background=True)  # (cases, classes, 4)
    total = cm.sum(0)
    per_class: dict[str, dict] = {}
    names = {"sensitivity": "sensitivity", "specificity": "specificity", "precision": "precision", "f1": "f1 score"}
    for c, name in enumerate(class_names):
        row: dict[str, float | None] = {}
        for key, metric in names.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = float(compute_confusion_matrix_metric(metric, total[c][None])[0])
            row[key] = None if not math.isfinite(v) else round(v, 4)
        positives = int(onehot_true[:, c].sum())
        if 0 < positives < len(y_true):
            row["roc_auc"] = round(float(cast(float, compute_roc_auc(prob[:, c], onehot_true[:, c]))), 4)
        else:
            row["roc_auc"] = None
        row["cases"] = positives
        per_class[name] = row
    matrix = [[int(((truth == t) & (pred == p)).sum()) for p in range(n)] for t in range(n)]
    correct = (pred == truth).float().tolist()
    ci = bootstrap_ci(correct)
    return {"accuracy": round(float(np.mean(correct)), 4) if correct else None,
            "accuracy_ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
            "per_class": per_class, "confusion_matrix": matrix}

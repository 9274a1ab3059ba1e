"""Scoring a model package on a dataset (``dicom-ai models evaluate PACKAGE DATASET``).

Each case is run through the node's own runtime (:func:`dicom_ai.infer.runtime.load_model`,
the same preprocessing and postprocessing as a job), its reference read onto the source grid
(:func:`dicom_ai.evaluate.reference.read_reference`), and scored per label
(:func:`dicom_ai.evaluate.metrics.segmentation_metrics`) or over cases
(:func:`dicom_ai.evaluate.metrics.classification_metrics`). A case that cannot be read is
reported with its reason and left out of the summaries. :func:`write_report` writes the JSON,
the Markdown report and, for segmentation, overlay PNGs of each case's worst slices.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from dicom_ai.evaluate.metrics import classification_metrics, segmentation_metrics, summary
from dicom_ai.evaluate.reference import read_matched_reference
from dicom_ai.evaluate.series import CacheLookup, load_volume
from dicom_ai.infer.runtime import load_model

if TYPE_CHECKING:
    from dicom_ai.infer.runtime import ClassResult

logger = logging.getLogger(__name__)

#: Overlays written per case: the slices where prediction and reference differ most.
WORST_SLICES = 3


def evaluate_cases(package_dir: Path, cases: list, *, lookup: CacheLookup | None = None,
                   device: str | None = None, overlays: Path | None = None,
                   progress: Callable[[int, int, str], None] | None = None,
                   reduced_precision: bool = False) -> dict:
    """Run a package on cases and score them.

    Parameters
    ----------
    cases:
        :class:`dicom_ai.train.dataset.DatasetCase` objects (series, reference or class,
        mapping).
    overlays:
        Folder for overlay PNGs of each segmentation case's worst slices (none when None).
    progress:
        Called as (case number, of cases, case name) before each case.
    reduced_precision:
        Run the network as a node with ``[worker] reduced_precision`` does (the package's
        ``autocast`` dtype where the device computes it natively; see
        :meth:`dicom_ai.infer.runtime.LoadedModel.load`); float32 by default.

    Returns
    -------
    dict
        ``model``, ``precision`` (``"float32"`` or ``"bfloat16"``), ``task``, ``cases`` (per
        case: ``series``, ``metrics`` per label name or ``predicted`` / ``probabilities`` /
        ``reference`` class, ``seconds``; or ``error``),
        ``summary`` (segmentation: per label and metric, :func:`summary` over cases;
        classification: :func:`classification_metrics`).
    """
    model = load_model(Path(package_dir), device=device, reduced_precision=reduced_precision)
    m = model.manifest
    rows: list[dict] = []
    for i, case in enumerate(cases, start=1):
        if progress:
            progress(i, len(cases), case.name)
        row: dict = {"series": case.series}
        try:
            t0 = time.perf_counter()
            volume = load_volume(case.series, lookup)
            output, _ = model.predict(volume)
            row["seconds"] = round(time.perf_counter() - t0, 2)
            if m.task == "segmentation":
                output = cast(np.ndarray, output)  # the task decides what predict() returns
                ref = read_matched_reference(Path(case.reference), volume, m.labels, case.mapping)
                spacing = cast("tuple[float, float, float]", tuple(float(s) for s in volume.spacing))
                row["metrics"] = {lab.name: segmentation_metrics(output, ref.mask, lab.value, spacing)
                                  for lab in m.labels if lab.value in ref.matched}
                row["reference_parts"] = {next(lb.name for lb in m.labels if lb.value == v): n
                                          for v, n in ref.matched.items()}
                if overlays is not None:
                    row["overlays"] = write_overlays(overlays, f"case{i:03d}", volume, output, ref.mask, m.labels)
            else:
                output = cast("ClassResult", output)
                names = [c.name for c in m.classes]
                if case.klass not in names:
                    raise ValueError(f"class {case.klass!r} is not one of the model's ({', '.join(names)})")
                row.update({"reference": case.klass, "predicted": output.top.name,
                            "probabilities": [round(float(p), 4) for p in output.probabilities]})
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # one bad case must not stop the rest
            row["error"] = f"{type(exc).__name__}: {exc}"
            logger.warning("case %s not scored: %s", case.name, row["error"])
        rows.append(row)
    scored = [r for r in rows if "error" not in r]
    if m.task == "segmentation":
        summ = {lab.name: {metric: summary([r["metrics"][lab.name][metric] for r in scored if lab.name in r["metrics"]])
                           for metric in ("dice", "hd95_mm", "msd_mm", "volume_difference_pct")}
                for lab in m.labels}
    else:
        names = [c.name for c in m.classes]
        summ = classification_metrics([names.index(r["reference"]) for r in scored],
                                      [r["probabilities"] for r in scored], names) if scored else {}
    return {"model": m.label, "precision": model.precision, "task": m.task, "cases": rows, "summary": summ}


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask)


def write_overlays(folder: Path, stem: str, volume, pred: np.ndarray, ref: np.ndarray, labels) -> list[str]:
    """PNGs of the :data:`WORST_SLICES` slices with the most voxels where prediction and
    reference disagree: CT in a lung window (-1350 to 150 HU), the reference outline in green,
    the prediction outline in each label's colour. Returns the file names."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    disagree = (pred != ref).reshape(pred.shape[0], -1).sum(1)
    order = [int(k) for k in np.argsort(disagree)[::-1][:WORST_SLICES] if disagree[k] > 0]
    names = []
    for k in order:
        g = np.clip((volume.array[k] + 1350.0) / 1500.0, 0, 1) * 255
        rgb = np.stack([g, g, g], -1).astype(np.uint8)
        for lab in labels:
            rgb[_outline(ref[k] == lab.value)] = (0, 230, 0)
            rgb[_outline(pred[k] == lab.value)] = lab.color
        name = f"{stem}_slice{k:04d}.png"
        Image.fromarray(rgb).save(folder / name)
        names.append(name)
    return names


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_report(result: dict) -> str:
    """The evaluation as Markdown: every case, then the summaries with 95 % CIs."""
    lines = [f"# Evaluation of {result['model']}", "", f"Network precision: {result.get('precision', 'float32')}.", ""]
    if result["task"] == "segmentation":
        lines += ["| case | label | Dice | HD95 mm | MSD mm | volume mL | reference mL | volume diff % |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in result["cases"]:
            if "error" in r:
                lines.append(f"| {Path(r['series']).name} | not scored: {r['error']} | | | | | | |")
                continue
            for name, mt in r["metrics"].items():
                lines.append(f"| {Path(r['series']).name} | {name} | {_cell(mt['dice'])} | {_cell(mt['hd95_mm'])} | "
                             f"{_cell(mt['msd_mm'])} | {_cell(mt['volume_ml'])} | {_cell(mt['reference_ml'])} | "
                             f"{_cell(mt['volume_difference_pct'])} |")
        lines += ["", "| label | metric | n | mean | 95 % CI | median | min | max |", "|---|---|---|---|---|---|---|---|"]
        for name, metrics in result["summary"].items():
            for metric, s in metrics.items():
                ci = s.get("ci95")
                lines.append(f"| {name} | {metric} | {s['n']} | {_cell(s.get('mean'))} | "
                             f"{'-' if not ci else f'{ci[0]:.3f} - {ci[1]:.3f}'} | {_cell(s.get('median'))} | "
                             f"{_cell(s.get('min'))} | {_cell(s.get('max'))} |")
    else:
        lines += ["| case | reference | predicted | probabilities |", "|---|---|---|---|"]
        for r in result["cases"]:
            if "error" in r:
                lines.append(f"| {Path(r['series']).name} | not scored: {r['error']} | | |")
            else:
                lines.append(f"| {Path(r['series']).name} | {r['reference']} | {r['predicted']} | {r['probabilities']} |")
        s = result["summary"]
        if s:
            ci = s.get("accuracy_ci95")
            lines += ["", f"Accuracy {_cell(s['accuracy'])}" + (f" (95 % CI {ci[0]:.3f} - {ci[1]:.3f})" if ci else ""),
                      "", "| class | cases | sensitivity | specificity | precision | F1 | ROC AUC |",
                      "|---|---|---|---|---|---|---|"]
            for name, c in s["per_class"].items():
                lines.append(f"| {name} | {c['cases']} | {_cell(c['sensitivity'])} | {_cell(c['specificity'])} | "
                             f"{_cell(c['precision'])} | {_cell(c['f1'])} | {_cell(c['roc_auc'])} |")
            lines += ["", "Confusion matrix (rows: reference, columns: predicted): "
                      + json.dumps(s["confusion_matrix"])]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: Path) -> tuple[Path, Path]:
    """``evaluation.json`` and ``evaluation.md`` in ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "evaluation.json"
    js.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = out_dir / "evaluation.md"
    md.write_text(markdown_report(result), encoding="utf-8")
    return js, md

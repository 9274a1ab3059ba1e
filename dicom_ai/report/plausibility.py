"""Plausibility of a segmentation result, checked after every segmentation job.

A model's manifest (:mod:`dicom_ai.package.manifest`) may give

* per label, ``plausible_volume_ml = (min, max)``: the label's volume in mL (an empty label is
  0 mL, reported as "not found");
* ``plausible_volume_ratios``: ranges of ``numerator / denominator`` of two labels' volumes;

and, whatever the manifest says, a result in which every label is empty ("no <labels>
found") is implausible for a series the routing rule sent to the model, unless the manifest
sets ``plausible_empty``. Bounds are included. An implausible result is not an error: the job
is done and its SEG and SR are delivered, but the study is put on attention in the worklist
with the reasons (``findings[<label>]["implausible"]``, see :mod:`dicom_ai.web.data`), the SR
says them in the affected measurement groups (:func:`dicom_ai.report.sr.build_sr`) and the
worker logs them in one line.

The ranges are plausibility limits, meant to catch gross failures (a lung cut off, both lungs
in one label, the wrong series), not clinical normal ranges: keep them wide. Defaults for the
adult lung model: :data:`ADULT_LUNG_VOLUME_ML`, :data:`ADULT_LEFT_RIGHT_LUNG_RATIO`,
:func:`with_adult_lung_plausibility`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from dicom_ai.package.manifest import ModelManifest, PlausibleRatio
from dicom_ai.report.codes import STRUCTURES
from dicom_ai.report.measure import LabelMeasurement

#: Plausible volume of one adult lung on a chest CT, mL (aerated lung as a lung model
#: segments it, vessels included). Adult total lung capacity is about 6 L (roughly 4-8 L by
#: sex and height; up to about 9-10 L in severe emphysema with hyperinflation) and the right
#: lung holds about 55 % of it, so even an extreme right lung stays below about 5.5 L: 6000 mL
#: flags only gross failures (air outside the body, a label spilling into the bowel). 300 mL
#: is far below a healthy lung in any adult (about 2-3.5 L at inspiration); below it the lung
#: is cut off, collapsed or missed, or the series covers only a part of it (e.g. the lung
#: bases of an abdominal CT), each worth a look.
ADULT_LUNG_VOLUME_ML: tuple[float, float] = (300.0, 6000.0)

#: Plausible left / right lung volume ratio of an adult. The left lung holds about 45 % of the
#: total (ratio about 0.8), but disease moves it far: the shipped demo series LIDC-IDRI-0314
#: has a non-aerated right upper lobe and measures left 1913 mL / right 929 mL (ratio 2.06,
#: see models/lung-unet/MODEL_CARD.md), a correct result that a bound of 2.0 would flag. So
#: 0.33 to 3.0: one lung more than three times the other happens when one is largely missed,
#: mislabelled as the other or leaked into (or after pneumonectomy or a total collapse, which
#: deserve attention anyway), not with a lobe more or less.
ADULT_LEFT_RIGHT_LUNG_RATIO: tuple[float, float] = (0.33, 3.0)

#: SNOMED CT codes of the lung labels' Segmented Property Type.
SCT_LEFT_LUNG = STRUCTURES["left lung"].value  # 44029006
SCT_RIGHT_LUNG = STRUCTURES["right lung"].value  # 3341006


@dataclass(frozen=True)
class PlausibilityIssue:
    """One reason why a segmentation result is implausible.

    Attributes
    ----------
    kind:
        ``"volume"`` (a label outside its ``plausible_volume_ml``, or empty), ``"ratio"`` (two
        labels' volume ratio outside its range, or undefined) or ``"empty"`` (every label
        empty).
    labels:
        Values of the labels it concerns (the measurement groups of the SR that say it).
    reason:
        One line for people, ASCII: label names and numbers only, no patient data.
    """

    kind: Literal["volume", "ratio", "empty"]
    labels: tuple[int, ...]
    reason: str


def _num(x: float) -> str:
    return f"{x:g}"


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_plausibility(
    measurements: Mapping[int, LabelMeasurement], manifest: ModelManifest
) -> list[PlausibilityIssue]:
    """Check a segmentation result against its manifest's plausible ranges.

    Parameters
    ----------
    measurements: Mapping[int, LabelMeasurement]
        :func:`dicom_ai.report.measure.measure_labels` of the result, keyed by label value.
    manifest: dicom_ai.package.manifest.ModelManifest
        The segmentation model: ``labels[].plausible_volume_ml``, ``plausible_volume_ratios``,
        ``plausible_empty``.

    Returns
    -------
    list[PlausibilityIssue]
        Empty when the result is plausible. When every label is empty (and
        ``plausible_empty`` is false) only that one issue, concerning every label; otherwise
        the volume issues in label order, then the ratio issues in manifest order. A ratio
        with an empty label is undefined; it is reported only when that label has no volume
        range of its own (which already reports it as not found).
    """
    if manifest.task != "segmentation" or not manifest.labels:
        return []
    labels = [lb for lb in manifest.labels if lb.value in measurements]
    if not labels:
        return []
    if all(measurements[lb.value].is_empty for lb in labels):
        if manifest.plausible_empty:
            return []
        return [PlausibilityIssue("empty", tuple(lb.value for lb in labels),
                                  f"no {_names([lb.name for lb in labels])} found")]

    issues: list[PlausibilityIssue] = []
    for label in labels:
        if label.plausible_volume_ml is None:
            continue
        low, high = label.plausible_volume_ml
        m = measurements[label.value]
        if m.is_empty and low > 0:
            reason = f"{label.name} not found (plausible volume {_num(low)} to {_num(high)} mL)"
        elif m.volume_ml < low:
            reason = (f"{label.name} volume {m.volume_ml:.0f} mL is below the plausible range "
                      f"{_num(low)} to {_num(high)} mL")
        elif m.volume_ml > high:
            reason = (f"{label.name} volume {m.volume_ml:.0f} mL is above the plausible range "
                      f"{_num(low)} to {_num(high)} mL")
        else:
            continue
        issues.append(PlausibilityIssue("volume", (label.value,), reason))

    by_value = {lb.value: lb for lb in labels}
    for ratio in manifest.plausible_volume_ratios:
        issue = _check_ratio(ratio, by_value, measurements)
        if issue is not None:
            issues.append(issue)
    return issues


def _check_ratio(ratio: PlausibleRatio, by_value: dict, measurements: Mapping[int, LabelMeasurement]):
    num, den = by_value.get(ratio.numerator), by_value.get(ratio.denominator)
    if num is None or den is None:
        return None
    m_num, m_den = measurements[num.value], measurements[den.value]
    low, high = ratio.range
    what = f"{num.name} / {den.name} volume ratio"
    empty = [lb for lb, m in ((num, m_num), (den, m_den)) if m.is_empty]
    if empty:
        if all(lb.plausible_volume_ml is not None and lb.plausible_volume_ml[0] > 0 for lb in empty):
            return None  # said as "<label> not found" by its volume range
        return PlausibilityIssue("ratio", (num.value, den.value),
                                 f"{what} undefined: {_names([lb.name for lb in empty])} not found")
    value = m_num.volume_ml / m_den.volume_ml
    if low <= value <= high:
        return None
    return PlausibilityIssue("ratio", (num.value, den.value),
                             f"{what} {value:.2f} is outside the plausible range {_num(low)} to {_num(high)}")


def reasons_by_label(issues: Iterable[PlausibilityIssue]) -> dict[int, list[str]]:
    """The reasons of ``issues`` per label value they concern, in issue order."""
    out: dict[int, list[str]] = {}
    for issue in issues:
        for value in issue.labels:
            out.setdefault(value, []).append(issue.reason)
    return out


def with_adult_lung_plausibility(
    manifest: ModelManifest,
    volume_ml: tuple[float, float] = ADULT_LUNG_VOLUME_ML,
    left_right_ratio: tuple[float, float] = ADULT_LEFT_RIGHT_LUNG_RATIO,
) -> ModelManifest:
    """A copy of a lung model's manifest with the adult lung plausibility ranges.

    The labels whose Segmented Property Type is SNOMED CT Left lung (44029006) or Right lung
    (3341006) get ``plausible_volume_ml = volume_ml``, and the ratio left / right gets
    ``left_right_ratio`` (replacing a ratio of the same two labels). Meant for new lung model
    versions (e.g. ``with_adult_lung_plausibility(lung_manifest(design, "2.0.0"))``); the
    manifests of shipped versions are left as they are.

    Raises
    ------
    ValueError
        If the manifest has not exactly one left and one right lung label.
    """
    def find(code: str) -> int:
        found = [lb.value for lb in manifest.labels if lb.type.scheme == "SCT" and lb.type.value == code]
        if len(found) != 1:
            raise ValueError(f"{manifest.label}: expected one label of type SCT {code}, found {len(found)}")
        return found[0]

    left, right = find(SCT_LEFT_LUNG), find(SCT_RIGHT_LUNG)
    labels = [lb.model_copy(update={"plausible_volume_ml": tuple(volume_ml)}) if lb.value in (left, right) else lb
              for lb in manifest.labels]
    ratios = [r for r in manifest.plausible_volume_ratios if {r.numerator, r.denominator} != {left, right}]
    ratios.append(PlausibleRatio(numerator=left, denominator=right, range=tuple(left_right_ratio)))
    # validate again: the copy must be a valid manifest
    return ModelManifest.model_validate(
        {**manifest.model_dump(), "labels": [lb.model_dump() for lb in labels],
         "plausible_volume_ratios": [r.model_dump() for r in ratios]}
    )

"""A site's own dataset: the file that lists its cases, and training a model on it.

A **dataset file** is TOML or CSV. Paths are relative to the file's folder.

TOML::

    task = "segmentation"                 # or "classification"
    # a new segmentation model needs its labels (with --from they come from that package):
    labels = [
      { value = 1, name = "Left lung",  code = "44029006" },   # SNOMED CT concept id
      { value = 2, name = "Right lung", code = "3341006" },
    ]
    # a new classifier needs its classes, in output order:
    # classes = [{ name = "normal", code = "17621005" }, { name = "abnormal", code = "263654008", attention = true }]

    [[cases]]
    series = "ct/patient1"                # a DICOM folder, or a Series Instance UID in the cache
    reference = "ct/patient1-rtstruct.dcm"  # SEG, RTSTRUCT or NIfTI (segmentation)
    map = ["Lung_L=Left lung"]            # optional: reference names to labels
    patient = "P1"                        # optional: default the series' Patient ID
    # class = "abnormal"                  # classification

CSV: a header row with the columns ``series``, ``reference`` (segmentation) or ``class``
(classification), and optionally ``patient`` and ``map`` (entries separated by ``;``); the
task follows from the columns. Labels of a new model cannot be given in CSV: use ``--from``.

Training (:func:`train_on_dataset`) loads every case (a case that cannot be read is reported
with its reason and left out; no readable case stops the training), optionally
cross-validates by patient (``folds``), trains on all cases, and writes a new package version
with a generated model card (the data, the per-fold results, the limits). Segmentation trains
the design of the base package (``--from``: its manifest and weights, fine-tuned) or a new
slice-wise 2D U-Net; classification trains a slice classifier (the body-region design) or
fine-tunes a TorchScript classifier.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch

from dicom_ai.evaluate.reference import read_matched_reference
from dicom_ai.evaluate.run import evaluate_cases
from dicom_ai.evaluate.series import CacheLookup, load_volume
from dicom_ai.infer.runtime import classification_input, default_device, load_predictor
from dicom_ai.models.convert import example_input
from dicom_ai.package.manifest import ClassLabel, Code, Label, ModelManifest, load_manifest, sha256_of, write_manifest
from dicom_ai.package.network import SliceWise, build_network, is_slicewise
from dicom_ai.report.codes import ANATOMICAL_STRUCTURE, FINDING, manifest_code
from dicom_ai.train.data import hu_on_model_grid, labels_to_model_grid
from dicom_ai.train.loop import optimise, seed_everything
from dicom_ai.train.lung import DESIGNS, lung_manifest
from dicom_ai.train.package import write_package
from dicom_ai.train.region import REGION_NET_PARAMS, augment_batch, region_manifest
from dicom_ai.train.segmentation import SegCase, train_segmentation

logger = logging.getLogger(__name__)

SCT_ANATOMICAL_STRUCTURE = manifest_code(ANATOMICAL_STRUCTURE)


class DatasetError(ValueError):
    """The dataset file is not usable; the message says why."""


@dataclass
class DatasetCase:
    """One case of a dataset: a series and its reference (segmentation) or class."""

    series: str
    reference: str | None = None
    klass: str | None = None
    patient: str | None = None
    mapping: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.series).name or self.series


@dataclass
class Dataset:
    """A parsed dataset file (see the module docstring)."""

    path: Path
    task: str
    cases: list[DatasetCase]
    labels: list[Label] | None = None
    classes: list[ClassLabel] | None = None


def _resolve(base: Path, value: str | None) -> str | None:
    """A path relative to the dataset file's folder; a value that is no existing path (a
    Series Instance UID) stays as written."""
    if value is None or str(value).strip() == "":
        return None
    value = str(value).strip()
    p = Path(value).expanduser()
    if not p.is_absolute():
        candidate = base / p
        if candidate.exists() or "/" in value or value.endswith((".dcm", ".nii", ".nii.gz")):
            return str(candidate)
    return str(p) if p.is_absolute() else value


def load_dataset(path: Path) -> Dataset:
    """Read a dataset file (``.toml`` or ``.csv``).

    Raises
    ------
    DatasetError
        If the file is missing, not TOML/CSV, has no cases, mixes tasks, or a case lacks its
        reference (segmentation) or class (classification).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset {path}: no such file")
    base = path.resolve().parent
    labels = classes = None
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"dataset {path.name}: not valid TOML: {exc}") from exc
        rows = data.get("cases", [])
        task = str(data.get("task", "") or "")
        try:
            if data.get("labels"):
                labels = [Label(value=int(lb["value"]), name=str(lb["name"]), category=SCT_ANATOMICAL_STRUCTURE,
                                type=Code(value=str(lb.get("code", "")) or "", scheme=str(lb.get("scheme", "SCT")),
                                          meaning=str(lb.get("meaning", lb["name"]))),
                                color=tuple(lb.get("color", (255, 0, 0))))
                          for lb in data["labels"]]
            if data.get("classes"):
                classes = [ClassLabel(index=i, name=str(c["name"]), attention=bool(c.get("attention", False)),
                                      code=Code(value=str(c.get("code", c["name"])), scheme=str(c.get("scheme", "SCT")),
                                                meaning=str(c.get("meaning", c["name"]))))
                           for i, c in enumerate(data["classes"])]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"dataset {path.name}: labels/classes: {exc}") from exc
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(fh)]
        task = "classification" if rows and "class" in rows[0] else "segmentation"
        for r in rows:
            r["map"] = [m.strip() for m in r.get("map", "").split(";") if m.strip()]
    else:
        raise DatasetError(f"dataset {path.name}: expected a .toml or .csv file")
    if not rows:
        raise DatasetError(f"dataset {path.name}: no cases")
    cases = []
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict) or not r.get("series"):
            raise DatasetError(f"dataset {path.name}: case {i} has no series")
        mapping = r.get("map", [])
        cases.append(DatasetCase(series=cast(str, _resolve(base, r["series"])), reference=_resolve(base, r.get("reference")),
                                 klass=(str(r["class"]) if r.get("class") not in (None, "") else None),
                                 patient=(str(r["patient"]) if r.get("patient") else None),
                                 mapping=[mapping] if isinstance(mapping, str) else list(mapping)))
    if not task:
        task = "classification" if all(c.klass for c in cases) else "segmentation"
    if task not in ("segmentation", "classification"):
        raise DatasetError(f"dataset {path.name}: task {task!r}: expected segmentation or classification")
    for i, c in enumerate(cases, start=1):
        if task == "segmentation" and not c.reference:
            raise DatasetError(f"dataset {path.name}: case {i} ({c.name}) has no reference")
        if task == "classification" and not c.klass:
            raise DatasetError(f"dataset {path.name}: case {i} ({c.name}) has no class")
    return Dataset(path, task, cases, labels, classes)


def patient_of(case: DatasetCase, volume) -> str:
    """The case's patient: as the dataset says, else Patient ID (+ Issuer) of the series, else
    the series itself (each unknown patient its own)."""
    if case.patient:
        return case.patient
    ds = volume.datasets[0] if getattr(volume, "datasets", None) else None
    if ds is not None and str(ds.get("PatientID", "") or ""):
        return f"{ds.get('IssuerOfPatientID', '') or ''}/{ds.PatientID}"
    return case.series


def patient_folds(patients: list[str], k: int) -> list[list[str]]:
    """Patients split into ``k`` folds (sorted, dealt round robin): no patient in two folds.

    Raises
    ------
    DatasetError
        If there are fewer patients than folds.
    """
    unique = sorted(set(patients))
    if k < 2 or k > len(unique):
        raise DatasetError(f"--folds {k}: needs 2 .. {len(unique)} (the number of patients)")
    return [unique[i::k] for i in range(k)]


@dataclass
class LoadedCase:
    """A readable case: the dataset case, its patient, and what training needs."""

    case: DatasetCase
    patient: str
    seg: SegCase | None = None
    slices: torch.Tensor | None = None
    klass: int | None = None


def _class_index_mask(mask: np.ndarray, labels: list[Label]) -> np.ndarray:
    """Label values -> network class indices (0 background, i for the i-th label)."""
    out = np.zeros(mask.shape, dtype=np.uint8)
    for i, lab in enumerate(labels, start=1):
        out[mask == lab.value] = i
    return out


def load_cases(dataset: Dataset, manifest: ModelManifest, lookup: CacheLookup | None = None,
               report: Callable[[str], None] | None = None) -> tuple[list[LoadedCase], list[dict]]:
    """Load every case on the model grid of ``manifest``; cases that cannot be read are
    returned as ``skipped`` rows ({case, reason}) and reported through ``report``.

    Raises
    ------
    DatasetError
        If no case can be read.
    """
    loaded: list[LoadedCase] = []
    skipped: list[dict] = []
    names = [c.name for c in manifest.classes]
    for c in dataset.cases:
        try:
            volume = load_volume(c.series, lookup)
            patient = patient_of(c, volume)
            if dataset.task == "segmentation":
                ref = read_matched_reference(Path(cast(str, c.reference)), volume, manifest.labels, c.mapping)
                spacing = cast("tuple[float, float, float]", tuple(manifest.spacing))
                hu = hu_on_model_grid(volume, spacing)
                label = labels_to_model_grid(_class_index_mask(ref.mask, manifest.labels), volume, spacing)
                loaded.append(LoadedCase(c, patient, seg=SegCase(c.name, patient, hu, label)))
            else:
                if c.klass not in names:
                    raise ValueError(f"class {c.klass!r} is not one of the model's ({', '.join(names)})")
                x = classification_input(volume, manifest, "cpu")
                loaded.append(LoadedCase(c, patient, slices=x, klass=names.index(c.klass)))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # noqa: PERF203 - one bad case must not stop
            reason = f"{type(exc).__name__}: {exc}"
            skipped.append({"case": c.series, "reason": reason})
            if report:
                report(f"case {c.name} left out: {reason}")
            logger.warning("case %s left out: %s", c.name, reason)
    if not loaded:
        raise DatasetError(f"dataset {dataset.path.name}: no case could be read")
    return loaded, skipped


def base_manifest(dataset: Dataset, base: Path | None, version: str, name: str | None) -> ModelManifest:
    """The manifest of the model to train: the base package's (``--from``), else a new one.

    Raises
    ------
    DatasetError
        If the base package's task differs from the dataset's, or a new model lacks labels or
        classes in the dataset file.
    """
    if base is not None:
        m = load_manifest(base)
        if m.task != dataset.task:
            raise DatasetError(f"--from {base.name} is a {m.task} model; the dataset is for {dataset.task}")
        m = m.model_copy(deep=True)
        # new weights: the base's validation in a reduced precision is not theirs
        m.autocast = None
    elif dataset.task == "segmentation":
        if not dataset.labels:
            raise DatasetError("a new segmentation model needs labels in the dataset file (or --from PACKAGE)")
        m = lung_manifest(DESIGNS["2d"], version)
        assert m.network is not None  # the lung recipe names its network
        m.labels = dataset.labels
        params = dict(m.network.params)
        params["out_channels"] = len(dataset.labels) + 1
        m.network.params = params
        m.description = f"{', '.join(lb.name for lb in dataset.labels)} segmentation (slice-wise 2D U-Net); research use only"
        # the lung recipe's hole filling and plausible ranges describe lungs, not these labels
        m.fill_holes_mm2 = m.fill_holes_below = None
        m.plausible_volume_ratios = []
    else:
        if not dataset.classes or len(dataset.classes) < 2:
            raise DatasetError("a new classifier needs at least two classes in the dataset file (or --from PACKAGE)")
        m = region_manifest(version)
        m.classes = dataset.classes
        m.finding = manifest_code(FINDING)
        m.description = f"{' / '.join(c.name for c in dataset.classes)} classifier (2D slice CNN); research use only"
    m.version = version
    if name:
        m.name = name
    m.sha256 = ""
    try:
        return ModelManifest.model_validate(m.model_dump())
    except ValueError as exc:
        raise DatasetError(f"the model to train has no valid manifest: {exc}") from exc


def _new_network(manifest: ModelManifest, base: Path | None, device: torch.device) -> torch.nn.Module:
    """The network to train: the base package's weights (fine-tuning) or a fresh one."""
    if base is not None:
        bm = load_manifest(base)
        if bm.runtime == "onnx":
            raise DatasetError(f"--from {base.name}: an ONNX package cannot be fine-tuned; use its MONAI or "
                               "TorchScript version")
        module = load_predictor(base, bm, torch.device("cpu")).module
        assert module is not None  # MONAI and TorchScript predictors hold their module
        net = cast(torch.nn.Module, module.net) if hasattr(module, "net") and is_slicewise(bm.network) else module
        return net.to(device)
    if manifest.task == "classification":
        import monai.networks.nets as nets

        return nets.Classifier(**{**REGION_NET_PARAMS, "classes": len(manifest.classes)}).to(device)
    assert manifest.network is not None  # a segmentation manifest names its network
    return build_network(manifest.network).to(device)


def _train(manifest: ModelManifest, cases: list[LoadedCase], base: Path | None, device: torch.device,
           iterations: int, seed: int, max_minutes: float, on_step) -> tuple[torch.nn.Module, dict]:
    seed_everything(seed)
    net = _new_network(manifest, base, device)
    lr = 5e-4 if base is not None else 2e-3
    if manifest.task == "segmentation":
        segs = cast("list[SegCase]", [c.seg for c in cases])  # segmentation cases carry .seg
        window = cast("tuple[float, float]", tuple(manifest.window) if manifest.window else (-1000.0, 500.0))
        run = train_segmentation(net, segs, slicewise=1 in manifest.patch_size and is_slicewise(manifest.network),
                                 window=window, patch=cast("tuple[int, int, int]", tuple(manifest.patch_size)), iterations=iterations,
                                 learning_rate=lr, max_minutes=max_minutes, seed=seed, on_step=on_step, device=device)
    else:
        run = _train_classifier(net, cases, iterations, lr, seed, max_minutes, on_step, device)
    return net, run.summary()


def _train_classifier(net, cases: list[LoadedCase], iterations: int, lr: float, seed: int, max_minutes: float,
                      on_step, device: torch.device):
    """Slices of each series labelled with the series' class, balanced over classes."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[LoadedCase]] = {}
    for c in cases:
        by_class.setdefault(cast(int, c.klass), []).append(c)  # classification cases carry .klass
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)

    def batch_loss(step: int) -> torch.Tensor:
        xs, ys = [], []
        for _ in range(16):
            k = rng.choice(sorted(by_class))
            case = rng.choice(by_class[k])
            slices = cast(torch.Tensor, case.slices)  # and .slices
            xs.append(slices[rng.randrange(slices.shape[0])])
            ys.append(k)
        x = augment_batch(torch.stack(xs), gen).to(device)
        return loss_fn(net(x), torch.tensor(ys, device=device))

    return optimise(net, batch_loss, iterations=iterations, learning_rate=lr, max_minutes=max_minutes, on_step=on_step)


def _save(output_dir: Path, manifest: ModelManifest, net: torch.nn.Module, log: dict) -> None:
    """Write the package in the manifest's runtime: a state dict (``monai``) or TorchScript."""
    net = net.cpu().eval()
    if manifest.runtime == "monai":
        write_package(output_dir, manifest, net, log)
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    weights = output_dir / manifest.weights
    module = SliceWise(net) if is_slicewise(manifest.network) else net
    with torch.no_grad():
        torch.jit.trace(module, example_input(manifest)).save(str(weights))
    manifest.sha256 = sha256_of(weights)
    write_manifest(output_dir, manifest)
    (output_dir / "training_log.json").write_text(json.dumps({**log, "sha256": manifest.sha256}, indent=2) + "\n")


def train_on_dataset(
    dataset_path: Path,
    output_dir: Path,
    *,
    base: Path | None = None,
    folds: int = 0,
    device: str | None = None,
    iterations: int = 1000,
    version: str | None = None,
    name: str | None = None,
    seed: int = 0,
    max_minutes: float = 60.0,
    lookup: CacheLookup | None = None,
    progress: Callable[[str, int, int, float | None], None] | None = None,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Train a model on a dataset file and write a new package version with its model card.

    Parameters
    ----------
    base:
        Package folder to fine-tune (its manifest, design and weights), else a new model.
    folds:
        ``K >= 2``: first a K-fold cross-validation by patient, each fold scored with
        :func:`dicom_ai.evaluate.run.evaluate_cases`; 0: none.
    device:
        ``"cpu"`` or ``"cuda"`` (default CUDA when available).
    version:
        Version of the new package (default: the base's with ``+site``, else ``1.0.0``).
    progress:
        Called as (stage, step, of steps, loss) while training.
    report:
        Called with one line for each case left out and each fold's result.

    Returns
    -------
    dict
        The training log: cases, skipped cases with reasons, folds and their results,
        iterations, wall time, sha256.

    Raises
    ------
    DatasetError
        As :func:`load_dataset`, :func:`base_manifest`, or when no case is readable.
    """
    t0 = time.perf_counter()
    dataset = load_dataset(dataset_path)
    if version is None:
        version = f"{load_manifest(base).version}+site" if base is not None else "1.0.0"
    manifest = base_manifest(dataset, Path(base) if base else None, version, name)
    dev = torch.device(device) if device else default_device()
    loaded, skipped = load_cases(dataset, manifest, lookup, report)
    log: dict = {"dataset": str(Path(dataset_path).resolve()), "task": dataset.task,
                 "base": str(base) if base else None, "device": dev.type, "seed": seed,
                 "cases": [{"series": c.case.series, "patient": c.patient} for c in loaded],
                 "skipped": skipped, "folds": []}

    def stage(label: str):
        return (lambda step, loss: progress(label, step + 1, iterations, loss)) if progress else None

    if folds:
        for i, held in enumerate(patient_folds([c.patient for c in loaded], folds), start=1):
            train = [c for c in loaded if c.patient not in held]
            test = [c.case for c in loaded if c.patient in held]
            net, run = _train(manifest, train, base, dev, iterations, seed, max_minutes, stage(f"fold {i}/{folds}"))
            with tempfile.TemporaryDirectory() as tmp:
                fold_manifest = manifest.model_copy(deep=True)
                _save(Path(tmp), fold_manifest, net, run)
                result = evaluate_cases(Path(tmp), test, lookup=lookup, device="cpu")
            log["folds"].append({"fold": i, "patients": held, **run, "summary": result["summary"],
                                 "cases": result["cases"]})
            if report:
                report(f"fold {i}: {json.dumps(result['summary'])}")
    net, run = _train(manifest, loaded, base, dev, iterations, seed, max_minutes, stage("all cases"))
    log.update(run)
    log["total_s"] = round(time.perf_counter() - t0, 1)
    output_dir = Path(output_dir)
    _save(output_dir, manifest, net, log)
    (output_dir / manifest.model_card).write_text(model_card(manifest, log, dataset), encoding="utf-8")
    return log


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def model_card(manifest: ModelManifest, log: dict, dataset: Dataset) -> str:
    """A Markdown model card for a package trained on a site's dataset."""
    lines = [f"# Model card: {manifest.name} {manifest.version}", "",
             "**Research use only; not a medical device.** Trained by `dicom-ai models train` on a site's own "
             "data; its results hold for data like the cases below, and nothing is known beyond them.", "",
             "## Training", "",
             f"- task: {manifest.task}; base: {log['base'] or 'none (new model)'}; device: {log['device']}; "
             f"seed {log['seed']}",
             f"- {log['iterations']} optimiser steps in {log['wall_s']} s (total {log['total_s']} s), final loss "
             f"{_fmt(log['final_loss'])}" + (" - stopped early by the time limit" if log.get("stopped_early") else ""),
             f"- dataset: `{Path(log['dataset']).name}`, {len(log['cases'])} cases of "
             f"{len({c['patient'] for c in log['cases']})} patients", ""]
    if manifest.task == "segmentation":
        lines += ["Labels: " + ", ".join(f"{lb.value} {lb.name} ({lb.type.scheme} {lb.type.value})"
                                         for lb in manifest.labels), ""]
    else:
        lines += ["Classes: " + ", ".join(c.name for c in manifest.classes), ""]
    lines += ["| case | patient |", "|---|---|"] + [f"| {Path(c['series']).name} | {c['patient']} |" for c in log["cases"]]
    if log["skipped"]:
        lines += ["", "Cases left out:", ""] + [f"- {Path(s['case']).name}: {s['reason']}" for s in log["skipped"]]
    lines += ["", "## Cross-validation by patient", ""]
    if not log["folds"]:
        lines += ["None was run (`--folds K` runs it): this model has no held-out result."]
    for f in log["folds"]:
        lines += [f"### Fold {f['fold']} (held out: {', '.join(f['patients'])})", "",
                  "```", json.dumps(f["summary"], indent=1), "```", ""]
        for case in f["cases"]:
            lines.append(f"- {Path(case['series']).name}: {json.dumps(case.get('metrics', case.get('error')))}")
        lines.append("")
    lines += ["", "## Limits", "",
              "- Trained and scored on the cases listed only; other scanners, protocols, patient groups and "
              "pathology are untested.",
              "- The references are what the dataset file named; their quality bounds the model's.",
              "- Check it with `dicom-ai models evaluate` on cases it never saw before enabling it."]
    return "\n".join(lines) + "\n"

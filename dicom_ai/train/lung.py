"""The recipe of the shipped lung model: data, labels, the two designs, cross-validation.

Data: every CC BY chest CT in ``../shared/data`` (:data:`LUNG_CASES`): six patients with both
lungs from five scanner models and five kernels (soft to sharp, 1-8 mm slices), plus a
chest/abdomen/pelvis CT with the lung bases and an upper-abdomen CT without lung (negative
example). NSCLC-Radiomics LUNG1-003 (CC BY-NC) is never trained on; it is only scored against
its clinical RTSTRUCT (:data:`EVALUATION_CASES`).

Labels (0 background, 1 left lung, 2 right lung): a TotalSegmentator v2 label map where one
exists, else the classical HU extraction :func:`dicom_ai.train.labels.classical_lung_labels`
computed on the grid of the design. Both are checked by overlay montages
(:func:`label_montage`).

Designs (:data:`DESIGNS`):

* ``"2d"``: a slice-wise 2D U-Net (MONAI ``UNet``, channels 12-24-48-96-192, instance norm)
  on axial slices at 1.5 mm in-plane and 3 mm slice spacing, in the spirit of lungmask's R231
  (Hofmanninger et al., Eur Radiol Exp 2020); trained with the scanner augmentation of
  :mod:`dicom_ai.train.segmentation`;
* ``"3d"``: the 3D U-Net of dicom-ai-lung 1.0.0 at 3 mm isotropic, 64 x 128 x 128 patches.

Cross-validation leaves one patient out (:func:`crossvalidate`): each fold trains on every
other case and scores the held-out patient's series on their source grid (Dice, against the
same classical labels for both designs), and LUNG1-003 against its clinical contours.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicom_ai.evaluate.metrics import dice_per_label
from dicom_ai.evaluate.reference import read_reference
from dicom_ai.evaluate.series import load_volume, volume_from_nifti
from dicom_ai.infer.runtime import SegmentationModel
from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import Label, ModelManifest, NetworkSpec
from dicom_ai.package.network import LUNG_UNET_PARAMS, build_network
from dicom_ai.report.codes import ANATOMICAL_STRUCTURE, STRUCTURES, manifest_code
from dicom_ai.report.plausibility import with_adult_lung_plausibility
from dicom_ai.train.data import (
    classical_reference,
    default_data_root,
    hu_on_model_grid,
    labels_to_model_grid,
    labels_to_source_grid,
)
from dicom_ai.train.labels import (
    CLASSICAL_AERATED_MAX_HU,
    CLASSICAL_MAX_HOLE_MM2,
    classical_lung_labels,
    labels_from_totalsegmentator,
)
from dicom_ai.train.loop import seed_everything
from dicom_ai.train.package import write_package
from dicom_ai.train.segmentation import SegCase, train_segmentation

logger = logging.getLogger(__name__)

#: Version of the label code; part of the cache key of prepared cases.
LABELS_VERSION = "classical-1"


@dataclass(frozen=True)
class LungCase:
    """A series of the lung recipe.

    ``role``: ``"chest"`` (both lungs: scored in cross-validation), ``"partial"`` (lung bases
    only) or ``"negative"`` (no lung); ``totalseg``: a TotalSegmentator v2 label map on the
    same patient space, else the classical extraction labels it.
    """

    key: str
    patient: str
    dicom_dir: str
    role: str = "chest"
    scanner: str = ""
    totalseg: str | None = None


LUNG_CASES: dict[str, LungCase] = {c.key: c for c in [
    LungCase("lidc0314", "LIDC-IDRI-0314", "ct_chest_LIDC-IDRI-0314/image", scanner="Philips, kernel D, 1 mm"),
    LungCase("lidc0001", "LIDC-IDRI-0001", "ct_chest_LIDC-IDRI-0001/image", scanner="GE LightSpeed Plus, STANDARD, 2.5 mm"),
    LungCase("lidc0003", "LIDC-IDRI-0003", "ct_chest_LIDC-IDRI-0003/image", scanner="GE LightSpeed16, STANDARD, 2.5 mm"),
    LungCase("a0001L", "Lung-PET-CT-Dx-A0001", "ct_chest_Lung-PET-CT-Dx-A0001/image_5mm_kernel_L",
             scanner="Philips Brilliance16, kernel L, 5 mm"),
    LungCase("a0001B", "Lung-PET-CT-Dx-A0001", "ct_chest_Lung-PET-CT-Dx-A0001/image_5mm_kernel_B",
             scanner="Philips Brilliance16, kernel B, 5 mm"),
    LungCase("a0002B40", "Lung-PET-CT-Dx-A0002", "ct_chest_Lung-PET-CT-Dx-A0002/image_8mm_kernel_B40f",
             scanner="Siemens Sensation 10, B40f, 8 mm"),
    LungCase("a0002B70", "Lung-PET-CT-Dx-A0002", "ct_chest_Lung-PET-CT-Dx-A0002/image_8mm_kernel_B70f",
             scanner="Siemens Sensation 10, B70f, 8 mm"),
    LungCase("c3n00247", "CPTAC-LSCC-C3N-00247", "ct_chest_CPTAC-LSCC-C3N-00247/image",
             scanner="Siemens Sensation 16, B70f, 3 mm"),
    LungCase("crlm", "CRLM-CT-1006", "ct_abdomen_CRLM-CT-1006/image", role="partial", scanner="GE, 5 mm"),
    LungCase("totalseg", "TotalSegmentator-example", "totalsegmentator_examples/example_ct_dicom", role="negative",
             scanner="Siemens, 2 mm, JPEG 2000", totalseg="totalsegmentator_examples/example_seg_dicom.nii.gz"),
]}

#: Evaluation-only data: scored, never trained on (CC BY-NC).
EVALUATION_CASES = {
    "lung1003": ("ct_chest_NSCLC-Radiomics-LUNG1-003_EVALUATION-ONLY/image",
                 "ct_chest_NSCLC-Radiomics-LUNG1-003_EVALUATION-ONLY/rtstruct/1-1.dcm"),
}
#: The TotalSegmentator NIfTI CT (lung bases) with its lobes, never trained on.
TOTALSEG_NIFTI = ("totalsegmentator_examples/example_ct_sm.nii.gz", "totalsegmentator_examples/example_seg.nii.gz")

LUNG_WINDOW: tuple[float, float] = (-1000.0, 500.0)
SCT_ANATOMICAL_STRUCTURE = manifest_code(ANATOMICAL_STRUCTURE)
LUNG_LABELS = [
    Label(value=1, name="Left lung", category=SCT_ANATOMICAL_STRUCTURE,
          type=manifest_code(STRUCTURES["left lung"]), color=(230, 90, 60)),
    Label(value=2, name="Right lung", category=SCT_ANATOMICAL_STRUCTURE,
          type=manifest_code(STRUCTURES["right lung"]), color=(60, 160, 230)),
]


@dataclass(frozen=True)
class Design:
    """A network design: its grid (z, y, x spacing in mm), sliding-window patch, network and
    the training settings of the recipe."""

    name: str
    spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    params: dict
    iterations: int
    batch_size: int
    description: str


LUNG_2D_PARAMS: dict = {
    "spatial_dims": 2, "in_channels": 1, "out_channels": 3, "channels": [12, 24, 48, 96, 192],
    "strides": [2, 2, 2, 2], "num_res_units": 1, "norm": "instance",
}

DESIGNS: dict[str, Design] = {
    "2d": Design("2d", (3.0, 1.5, 1.5), (1, 320, 320), LUNG_2D_PARAMS, iterations=1200, batch_size=8,
                 description="slice-wise 2D U-Net, 1.5 mm in-plane, 3 mm slices"),
    "3d": Design("3d", (3.0, 3.0, 3.0), (64, 128, 128), dict(LUNG_UNET_PARAMS), iterations=300, batch_size=2,
                 description="3D U-Net of 1.0.0, 3 mm isotropic, 64 x 128 x 128 patches"),
}


def lung_manifest(design: Design, version: str) -> ModelManifest:
    """The manifest of a lung model of ``design`` (sha256 filled in when the weights are saved),
    with hole filling as the labels define it and the adult lung plausibility ranges."""
    kind = "slice-wise 2D U-Net" if design.params["spatial_dims"] == 2 else "3D U-Net"
    manifest = ModelManifest(
        name="dicom-ai-lung",
        version=version,
        task="segmentation",
        description=f"Left and right lung segmentation of chest CT ({kind}, MONAI); research use only",
        modality="CT",
        body_region="CHEST",
        spacing=design.spacing,
        window=LUNG_WINDOW,
        patch_size=design.patch,
        network=NetworkSpec(arch="monai.networks.nets.UNet", params=dict(design.params)),
        weights="model.pt",
        labels=LUNG_LABELS,
        license="Apache-2.0 (weights); training data CC BY 3.0 / CC BY 4.0 / Apache-2.0, see DATA_LICENSES.md",
        model_card="MODEL_CARD.md",
        min_slices=10,
        # the labels' own definition: vessels and nodules inside the lung are lung, and so is
        # aerated parenchyma (mean below the classical extraction's -500 HU) enclosed by lung
        fill_holes_mm2=CLASSICAL_MAX_HOLE_MM2,
        fill_holes_below=CLASSICAL_AERATED_MAX_HU,
    )
    # adult lung volumes and left/right ratio: a result outside them puts the study on attention
    return with_adult_lung_plausibility(manifest)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dicom-ai" / "lung-cases"


def load_case_volume(case: LungCase, data_root: Path) -> Volume:
    """The case's series as a :class:`Volume`."""
    return load_volume(Path(data_root) / case.dicom_dir)


def prepare(case: LungCase, data_root: Path, spacing: tuple[float, float, float],
            volume: Volume | None = None, cache: Path | None = None) -> SegCase:
    """HU and labels of ``case`` on the canonical grid of ``spacing`` (cached as .npz).

    Returns
    -------
    SegCase
        ``hu`` float32 (z, y, x) and ``label`` uint8 (z, y, x): 0, 1 left lung, 2 right lung.
    """
    cache = cache or _cache_dir()
    key = f"{case.key}_{LABELS_VERSION}_{'x'.join(f'{s:g}' for s in spacing)}.npz"
    path = cache / key
    if path.is_file():
        d = np.load(path)
        return SegCase(case.key, case.patient, d["hu"], d["label"])
    volume = volume or load_case_volume(case, data_root)
    hu = hu_on_model_grid(volume, spacing)
    if case.totalseg:
        label = labels_to_model_grid(labels_from_totalsegmentator(volume, Path(data_root) / case.totalseg), volume, spacing)
    else:
        label = classical_lung_labels(hu, spacing)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, hu=hu.astype(np.float32), label=label.astype(np.uint8))
    os.replace(tmp, path)
    return SegCase(case.key, case.patient, hu.astype(np.float32), label.astype(np.uint8))


def reference_labels(case: LungCase, data_root: Path, volume: Volume) -> np.ndarray:
    """The scoring reference of a training series on its source grid: its labels on the 2D
    design's grid (1.5 mm in-plane), mapped back nearest-neighbour; the same for every design."""
    prepared = prepare(case, data_root, DESIGNS["2d"].spacing, volume=volume)
    return labels_to_source_grid(prepared.label, volume)


def build_lung_network(design: Design) -> torch.nn.Module:
    return build_network(NetworkSpec(arch="monai.networks.nets.UNet", params=dict(design.params)))


def train_design(design: Design, cases: list[SegCase], *, seed: int = 0, iterations: int | None = None,
                 max_minutes: float = 30.0, on_step=None) -> tuple[torch.nn.Module, dict]:
    """Train a network of ``design`` on ``cases``; returns it and a log dict."""
    seed_everything(seed)
    net = build_lung_network(design)
    iterations = design.iterations if iterations is None else iterations
    run = train_segmentation(net, cases, slicewise=design.params["spatial_dims"] == 2, window=LUNG_WINDOW,
                             patch=design.patch, iterations=iterations, batch_size=design.batch_size,
                             max_minutes=max_minutes, seed=seed, on_step=on_step)
    return net, {"design": design.name, "cases": [c.name for c in cases], "seed": seed, **run.summary()}


def score_package(package_dir: Path, data_root: Path, keys: list[str], *, clinical: bool = True,
                  totalseg: bool = False) -> dict:
    """Dice per lung of a package on training series (against :func:`reference_labels`),
    on LUNG1-003 against its clinical RTSTRUCT, and on the TotalSegmentator NIfTI against its
    lobes; beside each, the classical extraction on the same reference.

    Returns
    -------
    dict
        key -> {"left", "right", "both", "classical_left", "classical_right", "classical_both",
        "seconds"}.
    """
    model = SegmentationModel.load(Path(package_dir), device="cpu")
    out: dict[str, dict] = {}

    def score(name: str, volume: Volume, ref: np.ndarray, classical: np.ndarray | None) -> None:
        t0 = time.perf_counter()
        mask, _ = model.predict(volume)
        row = {"seconds": round(time.perf_counter() - t0, 2)}
        for tag, pred in (("", mask), ("classical_", classical)):
            if pred is None:
                continue
            d = dice_per_label(pred, ref, [1, 2])
            both = dice_per_label((pred > 0).astype(np.uint8), (ref > 0).astype(np.uint8), [1])[1]
            row.update({f"{tag}left": round(d[1], 4), f"{tag}right": round(d[2], 4), f"{tag}both": round(both, 4)})
        out[name] = row
        logger.info("%s: %s", name, row)

    for key in keys:
        case = LUNG_CASES[key]
        volume = load_case_volume(case, data_root)
        score(key, volume, reference_labels(case, data_root, volume), None)
    if clinical:
        image, rt = EVALUATION_CASES["lung1003"]
        volume = load_volume(Path(data_root) / image)
        ref = read_reference(Path(data_root) / rt, volume, LUNG_LABELS, {"Lung-Left": 1, "Lung-Right": 2}).mask
        score("lung1003", volume, ref, classical_reference(volume, DESIGNS["2d"].spacing))
    if totalseg:
        ct, seg = TOTALSEG_NIFTI
        volume = volume_from_nifti(Path(data_root) / ct)
        ref = labels_from_totalsegmentator(volume, Path(data_root) / seg)
        score("totalseg_nifti", volume, ref, classical_reference(volume, DESIGNS["2d"].spacing))
    return out


def crossvalidate(out_dir: Path, design_name: str, data_root: Path | None = None, patients: list[str] | None = None,
                  seed: int = 0, iterations: int | None = None) -> dict:
    """Leave-one-patient-out cross-validation of a design; one JSON per fold in ``out_dir``
    (a fold already there is not run again), each fold's package under ``out_dir/packages``,
    and ``summary-<design>.json``.

    Parameters
    ----------
    patients:
        The patients to hold out (default: every patient with a ``"chest"`` series).
    """
    data_root = Path(data_root) if data_root else default_data_root()
    design = DESIGNS[design_name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chest = sorted({c.patient for c in LUNG_CASES.values() if c.role == "chest"})
    folds = patients or chest
    prepared = {k: prepare(c, data_root, design.spacing) for k, c in LUNG_CASES.items()}
    results = {}
    for patient in folds:
        path = out_dir / f"fold-{design.name}-{patient}.json"
        if path.is_file():
            results[patient] = json.loads(path.read_text())
            continue
        train = [prepared[k] for k, c in LUNG_CASES.items() if c.patient != patient]
        held = [k for k, c in LUNG_CASES.items() if c.patient == patient]
        net, log = train_design(design, train, seed=seed, iterations=iterations)
        package = out_dir / "packages" / f"{design.name}-{patient}"
        write_package(package, lung_manifest(design, "cv"), net, log)
        log["scores"] = score_package(package, data_root, held)
        log["package"] = str(package)
        log["held_out"] = patient
        path.write_text(json.dumps(log, indent=2) + "\n")
        results[patient] = log
        logger.info("fold %s: %s", patient, log["scores"])
    (out_dir / f"summary-{design.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def train_lung(output_dir: Path, design_name: str = "2d", data_root: Path | None = None, version: str = "2.0.0",
               seed: int = 0, iterations: int | None = None, max_minutes: float = 60.0, on_step=None) -> dict:
    """Train the shipped lung model on every case of :data:`LUNG_CASES` and write its package
    (``manifest.json``, ``model.pt``, ``training_log.json``; an existing model card is kept).

    Returns
    -------
    dict
        The training log (design, cases, steps, wall time, final loss, sha256, scores on
        LUNG1-003 and the TotalSegmentator NIfTI).
    """
    t0 = time.perf_counter()
    data_root = Path(data_root) if data_root else default_data_root()
    design = DESIGNS[design_name]
    cases = [prepare(c, data_root, design.spacing) for c in LUNG_CASES.values()]
    prepare_s = time.perf_counter() - t0
    net, log = train_design(design, cases, seed=seed, iterations=iterations, max_minutes=max_minutes, on_step=on_step)
    log["prepare_s"] = round(prepare_s, 1)
    manifest = lung_manifest(design, version)
    write_package(Path(output_dir), manifest, net, log)
    log["scores"] = score_package(Path(output_dir), data_root, [], clinical=True, totalseg=True)
    log["total_s"] = round(time.perf_counter() - t0, 1)
    write_package(Path(output_dir), manifest, net, log)
    return log


def label_montage(key: str, data_root: Path | None, out_dir: Path, slices: int = 16) -> Path:
    """An overlay montage of a training case's labels on the 2D design's grid: ``slices``
    evenly spaced axial slices from top to bottom, CT -1000 to 500 HU, left lung red, right
    lung blue (canonical columns run towards the patient's left, so the left lung is on the
    image's right). Returns the PNG path."""
    from PIL import Image

    data_root = Path(data_root) if data_root else default_data_root()
    case = prepare(LUNG_CASES[key], data_root, DESIGNS["2d"].spacing)
    tiles = []
    for z in np.linspace(case.hu.shape[0] - 1, 0, slices).astype(int):
        g = np.clip((case.hu[z] - LUNG_WINDOW[0]) / (LUNG_WINDOW[1] - LUNG_WINDOW[0]), 0, 1) * 255
        rgb = np.stack([g, g, g], -1)
        for value, colour in ((1, (255, 80, 40)), (2, (40, 160, 255))):
            m = case.label[z] == value
            rgb[m] = 0.55 * rgb[m] + 0.45 * np.array(colour)
        tiles.append(np.asarray(Image.fromarray(rgb.astype(np.uint8)).resize((120, 120))))
    cols = 4
    rows = [np.concatenate(tiles[i : i + cols], 1) for i in range(0, len(tiles), cols)]
    out = Path(out_dir) / f"labels-{key}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(out, optimize=True)
    return out

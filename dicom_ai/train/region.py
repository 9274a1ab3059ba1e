"""Body-region classifier (head / chest / abdomen per axial CT slice): data, labels, training,
held-out evaluation and its model package (TorchScript).

The model answers "Target Region" (DCM 123014) for a CT series: each axial slice is classified
and the node averages the slice probabilities (manifest ``input = "slices"``, see
:class:`dicom_ai.infer.runtime.ClassificationModel`). Training and evaluation make the network
input with :func:`dicom_ai.infer.runtime.classification_input`, the function inference uses, so
both see the same canonical grid, window and resize.

Data (``../shared/data``, see ``models/body-region/MODEL_CARD.md``): :data:`REGION_SERIES`.

Per-slice labels (on the canonical grid, slices every ``slice_mm`` mm; ``IGNORE`` = not trained
on and not scored):

* chest: lung covers at least :data:`CHEST_MIN_LUNG_FRACTION` of the body cross-section of the
  slice. Lung is TotalSegmentator v2 lobes 10-14 where a label map exists, else the classical
  HU extraction :func:`dicom_ai.train.labels.classical_lung_labels` (aerated lung);
* abdomen: no lung in the slice (under :data:`MIN_LUNG_MM2`), the slice lies below the lowest
  lung slice of its series (a series without lung needs the label map), and - where a
  TotalSegmentator map exists - at least :data:`MIN_ORGAN_MM2` of abdominal organs (spleen,
  kidneys, gallbladder, liver, stomach, pancreas, small bowel, duodenum, colon: v2 classes 1-7,
  18-20) in it;
* head: every slice of the head CT series (``edge_cases/dcm_qa_ct_GE_tilt``; no label map,
  labelled by series content, checked by eye);
* everything else is ``IGNORE``: slices with a little lung (0 < fraction < 0.15: lung apices
  and bases, the thoraco-abdominal transition), slices above the lungs (neck, shoulders),
  slices without lung in a series without a label map.

Pelvis is not a class: no series reaches below the iliac crests by more than a slice or two.

The gantry-tilted head series cannot be one :class:`Volume` (``load_series`` refuses tilt and
uneven spacing), so each of its files is read as a one-slice volume (:func:`slice_volumes`):
a slice classifier needs nothing else.

Entry points: :func:`train_region_model` (one training run, optional held-out series, writes
the package), :func:`crossvalidate_region` (two folds by series), :func:`evaluate_region_package`
and :func:`classify_path`; ``python -m dicom_ai.train train-region | evaluate-region``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage as ndi

from dicom_ai.evaluate.reference import sample_label_map
from dicom_ai.evaluate.series import series_files, volume_from_nifti
from dicom_ai.infer.preprocess import canonical_transform, resampled_shape
from dicom_ai.infer.runtime import ClassificationModel, ClassResult, classification_input
from dicom_ai.infer.volume import IrregularGrid, NoImageSlices, Volume, load_series
from dicom_ai.package.manifest import ClassLabel, ModelManifest, sha256_of, write_manifest
from dicom_ai.report.codes import REGIONS, TARGET_REGION, manifest_code
from dicom_ai.train.data import (
    default_data_root,
    hu_on_model_grid,
    labels_to_model_grid,
)
from dicom_ai.train.labels import classical_lung_labels
from dicom_ai.train.loop import optimise, seed_everything

logger = logging.getLogger(__name__)

#: Class indices (network output channels); ``IGNORE`` marks unlabelled slices.
HEAD, CHEST, ABDOMEN = 0, 1, 2
IGNORE = -1
CLASS_NAMES = ("head", "chest", "abdomen")

#: Model grid spacing (slices, rows, columns) in mm; each slice is then resized to REGION_PATCH.
REGION_SPACING: tuple[float, float, float] = (5.0, 6.0, 6.0)
#: Network input per slice: (1, rows, columns).
REGION_PATCH: tuple[int, int, int] = (1, 64, 64)
#: Intensity window in HU (air to dense bone), scaled to [0, 1].
REGION_WINDOW: tuple[float, float] = (-1000.0, 1000.0)
#: Slice step of the training grid (mm): half the model's 5 mm, twice the (correlated) slices.
TRAIN_SLICE_MM = 2.5
#: In-plane spacing (mm) of the grid the labels are derived on.
LABEL_PIXEL_MM = 3.0

#: A slice is chest when lung covers at least this fraction of the body cross-section.
CHEST_MIN_LUNG_FRACTION = 0.15
#: Less lung than this (mm^2) in a slice counts as none.
MIN_LUNG_MM2 = 100.0
#: Abdominal organs (TotalSegmentator map) needed in an abdomen slice, mm^2.
MIN_ORGAN_MM2 = 1000.0

#: TotalSegmentator v2 ("total" task, 117 classes) numbers used for the labels.
TOTALSEG_LUNG = (10, 11, 12, 13, 14)  # lung lobes
TOTALSEG_ABDOMEN = (1, 2, 3, 4, 5, 6, 7, 18, 19, 20)  # spleen, kidneys, gallbladder, liver,
# stomach, pancreas, small bowel, duodenum, colon

#: Classifier network: ``monai.networks.nets.Classifier`` kwargs (about 0.2 M parameters).
REGION_NET_PARAMS: dict[str, Any] = dict(
    in_shape=(1, 64, 64),
    classes=3,
    channels=(16, 32, 64, 128),
    strides=(2, 2, 2, 2),
    num_res_units=1,
    norm="batch",
    dropout=0.1,
)

REGION_FINDING = manifest_code(TARGET_REGION)
REGION_CLASSES = [
    ClassLabel(index=HEAD, name="head", code=manifest_code(REGIONS["head"])),
    ClassLabel(index=CHEST, name="chest", code=manifest_code(REGIONS["chest"])),
    ClassLabel(index=ABDOMEN, name="abdomen", code=manifest_code(REGIONS["abdomen"])),
]


@dataclass(frozen=True)
class RegionSeries:
    """A series used for training or evaluation.

    Attributes
    ----------
    key:
        Short name (``holdout`` uses it).
    path:
        DICOM folder or NIfTI file, relative to the data root.
    source:
        ``"dicom"`` (:func:`load_series`), ``"nifti"`` (:func:`volume_from_nifti`) or
        ``"slices"`` (each file its own one-slice volume, :func:`slice_volumes`).
    labels:
        ``"lung"`` (classical HU lung extraction), ``"totalseg"`` (the label map ``totalseg``)
        or ``"head"`` (every slice head).
    totalseg:
        TotalSegmentator v2 label map relative to the data root (``labels = "totalseg"``).
    files:
        ``(start, stop)``: only these files of the folder, sorted by name (a slab of a series).
    """

    key: str
    path: str
    source: Literal["dicom", "nifti", "slices"]
    labels: Literal["lung", "totalseg", "head"]
    totalseg: str | None = None
    files: tuple[int, int] | None = None


#: The series of the region model. The head CT is one series split into two slabs (files 01-14,
#: skull base to the lateral ventricles, 4.2 mm; files 15-28, to the vertex, 7.4 mm) so that a
#: head slab can be held out.
REGION_SERIES: dict[str, RegionSeries] = {
    s.key: s
    for s in (
        RegionSeries("lidc", "ct_chest_LIDC-IDRI-0314/image", "dicom", "lung"),
        RegionSeries("crlm", "ct_abdomen_CRLM-CT-1006/image", "dicom", "lung"),
        RegionSeries(
            "ts-dicom",
            "totalsegmentator_examples/example_ct_dicom",
            "dicom",
            "totalseg",
            "totalsegmentator_examples/example_seg_dicom.nii.gz",
        ),
        RegionSeries(
            "ts-nifti",
            "totalsegmentator_examples/example_ct_sm.nii.gz",
            "nifti",
            "totalseg",
            "totalsegmentator_examples/example_seg.nii.gz",
        ),
        RegionSeries("ge-head-a", "edge_cases/dcm_qa_ct_GE_tilt/GE", "slices", "head", files=(0, 14)),
        RegionSeries("ge-head-b", "edge_cases/dcm_qa_ct_GE_tilt/GE", "slices", "head", files=(14, 28)),
    )
}

#: Two-fold cross-validation by series: each fold holds out one series or slab of every class,
#: and every series is held out once.
CV_FOLDS: tuple[tuple[str, ...], ...] = (
    ("crlm", "ts-dicom", "ge-head-b"),
    ("lidc", "ts-nifti", "ge-head-a"),
)

#: Single CT images from the edge-case data of other projects (other patients, scanners and
#: sites), never trained on; labelled by looking at each image (not by a rule). Ambiguous ones
#: (a zoomed thoracic vertebra, a lung-base/liver slice, a coronal pelvis, a topogram) are left out.
EXTERNAL_IMAGES: tuple[tuple[str, str, int], ...] = (
    ("pydicom J2K_pixelrep_mismatch", "edge_cases/pydicom-wheel/J2K_pixelrep_mismatch.dcm", HEAD),
    ("fo-dicom IM-0001-0001-0001", "edge_cases/fo-dicom/IM-0001-0001-0001.dcm", HEAD),
    ("pydicom-data 693_UNCI", "edge_cases/pydicom-data/693_UNCI.dcm", HEAD),
    ("pylibjpeg-data ELSCINT1_JP2vsJ2K", "edge_cases/pylibjpeg-data/JPEG2000_ELSCINT1_JP2vsJ2K.dcm", HEAD),
    ("fo-dicom CT1_J2KI", "edge_cases/fo-dicom/CT1_J2KI", CHEST),
    (
        "pylibjpeg-data TOSHIBA_J2K_OpenJPEGv2Regression",
        "edge_cases/pylibjpeg-data/JPEG2000Lossless_TOSHIBA_J2K_OpenJPEGv2Regression.dcm",
        CHEST,
    ),
    ("pydicom-data explicit_VR-UN", "edge_cases/pydicom-data/explicit_VR-UN.dcm", ABDOMEN),
)


def region_manifest(version: str = "1.0.0", slice_mm: float | None = None) -> ModelManifest:
    """The manifest of the body-region model (``sha256`` empty until the weights are written).

    ``slice_mm`` replaces the 5 mm slice step (training grid only; the package keeps 5 mm).
    """
    spacing = REGION_SPACING if slice_mm is None else (float(slice_mm), *REGION_SPACING[1:])
    return ModelManifest(
        name="dicom-ai-body-region",
        version=version,
        task="classification",
        description=(
            "Body region (head, chest, abdomen) of a CT series from its axial slices "
            "(small 2D CNN, MONAI); proof of the classification path, research use only"
        ),
        modality="CT",
        body_region="WHOLEBODY",
        spacing=spacing,
        normalization="window",
        window=REGION_WINDOW,
        patch_size=REGION_PATCH,
        input="slices",
        runtime="torchscript",
        weights="model.ts",
        classes=copy.deepcopy(REGION_CLASSES),
        finding=REGION_FINDING,
        attention_below=0.6,
        license="Apache-2.0 (weights); training data CC BY 3.0 / CC BY 4.0 / Apache-2.0 / BSD-2-Clause, see DATA_LICENSES.md",
        model_card="MODEL_CARD.md",
        min_slices=1,
    )


def build_region_network() -> torch.nn.Module:
    """The classifier: ``monai.networks.nets.Classifier(**REGION_NET_PARAMS)``; input
    (batch, 1, 64, 64) in [0, 1], output logits (batch, 3) in class-index order."""
    from monai.networks.nets import Classifier

    return Classifier(**REGION_NET_PARAMS)


# --------------------------------------------------------------------------------------------
# data


def slice_volumes(paths: list[Path]) -> list[Volume]:
    """Each file as its own one-slice :class:`Volume`, ordered along the slice normal.

    For series :func:`load_series` refuses as a whole (gantry tilt, uneven slice spacing): every
    slice is still a valid axial image, and a slice classifier needs nothing else. Files that
    are no image slice are left out.

    Returns
    -------
    list[Volume]
        One volume (1, rows, columns) per image file, from inferior to superior when the normal
        points up.

    Raises
    ------
    dicom_ai.infer.volume.VolumeError
        If no file is an image slice, or one cannot be decoded.
    """
    vols = []
    for p in paths:
        try:
            vols.append(load_series([Path(p)]))
        except NoImageSlices:
            continue
    if not vols:
        raise NoImageSlices("no image slices among the files")
    return sorted(vols, key=lambda v: float(v.origin @ v.direction[2]))


def load_region_volumes(spec: RegionSeries, data_root: Path) -> list[Volume]:
    """The volume of a series (one), or its one-slice volumes (``source = "slices"``)."""
    path = Path(data_root) / spec.path
    if spec.source == "nifti":
        return [volume_from_nifti(path)]
    files = series_files(path)
    if spec.files is not None:
        files = files[spec.files[0]:spec.files[1]]
    if spec.source == "slices":
        return slice_volumes(files)
    return [load_series(files)]


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Body (and table) per slice: everything but air (HU < -320) connected, in the slice, to
    the image border. ``hu`` (z, y, x) -> bool (z, y, x)."""
    out = np.zeros(hu.shape, dtype=bool)
    for z in range(hu.shape[0]):
        lab, n = ndi.label(hu[z] < -320)
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        out[z] = ~np.isin(lab, border[border != 0])
    return out


def region_labels_from_lung(
    lung: np.ndarray,
    body: np.ndarray,
    spacing: tuple[float, float, float],
    organs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Chest / abdomen / IGNORE per slice from lung and body masks (the rules of the module
    docstring).

    Parameters
    ----------
    lung, body:
        bool (z, y, x) on the canonical grid (z from inferior to superior).
    spacing:
        (z, y, x) in mm.
    organs:
        Abdominal organ area per slice in mm^2 (TotalSegmentator), shape (z,); None where the
        series has no label map.

    Returns
    -------
    labels:
        int64 (z,): CHEST, ABDOMEN or IGNORE.
    lung_fraction:
        float (z,): lung area / body area per slice.
    """
    px = spacing[1] * spacing[2]
    lung_mm2 = lung.sum(axis=(1, 2)) * px
    body_mm2 = body.sum(axis=(1, 2)) * px
    fraction = lung_mm2 / np.maximum(body_mm2, px)
    has_lung = lung_mm2 >= MIN_LUNG_MM2
    labels = np.full(lung.shape[0], IGNORE, dtype=np.int64)
    labels[has_lung & (fraction >= CHEST_MIN_LUNG_FRACTION)] = CHEST
    below = np.zeros(lung.shape[0], dtype=bool)
    if has_lung.any():
        below[: int(np.flatnonzero(has_lung)[0])] = True
    elif organs is not None:
        below[:] = True  # no lung anywhere: the label map must show the abdomen
    abdomen = below & ~has_lung
    if organs is not None:
        abdomen &= organs >= MIN_ORGAN_MM2
    labels[abdomen] = ABDOMEN
    return labels, fraction


def slice_labels(spec: RegionSeries, volume: Volume, data_root: Path, slice_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Region label of each canonical slice of ``volume`` at a ``slice_mm`` slice step.

    The slices are those of :func:`classification_input` for a manifest with that slice step
    (same canonical orientation and number of slices; the labels are derived on a 3 mm in-plane
    grid).

    Returns
    -------
    labels:
        int64 (slices,): HEAD, CHEST, ABDOMEN or IGNORE, inferior to superior.
    lung_fraction:
        float (slices,) (NaN for head series).
    """
    spacing = (float(slice_mm), LABEL_PIXEL_MM, LABEL_PIXEL_MM)
    tf = canonical_transform(volume)
    n = resampled_shape(tf.shape, tf.spacing, spacing)[0]
    if spec.labels == "head":
        return np.full(n, HEAD, dtype=np.int64), np.full(n, np.nan)
    hu = hu_on_model_grid(volume, spacing)
    body = body_mask(hu)
    organs = None
    if spec.labels == "totalseg":
        assert spec.totalseg is not None  # labels = "totalseg" names its label map
        src = sample_label_map(volume, Path(data_root) / spec.totalseg)
        ts = labels_to_model_grid(src.astype(np.uint8), volume, spacing)
        lung = np.isin(ts, TOTALSEG_LUNG)
        organs = np.isin(ts, TOTALSEG_ABDOMEN).sum(axis=(1, 2)) * spacing[1] * spacing[2]
    else:
        lung = classical_lung_labels(hu, spacing) > 0
    labels, fraction = region_labels_from_lung(lung, body, spacing, organs)
    assert labels.shape[0] == n
    return labels, fraction


@dataclass
class RegionCase:
    """The slices of one series as network input, with their labels.

    Attributes
    ----------
    key:
        Series key (:data:`REGION_SERIES`).
    x:
        float32 (slices, 1, 64, 64): :func:`classification_input` of the series, inferior to
        superior (one slice per file for ``source = "slices"``).
    y:
        int64 (slices,): class index or IGNORE.
    lung_fraction:
        float (slices,).
    volumes:
        The source volumes (kept for series-level prediction through the runtime).
    """

    key: str
    x: torch.Tensor
    y: np.ndarray
    lung_fraction: np.ndarray
    volumes: list[Volume] = field(default_factory=list, repr=False)

    @property
    def reference(self) -> int:
        """The series' region: the most frequent labelled class (IGNORE if none)."""
        labelled = self.y[self.y >= 0]
        return int(np.bincount(labelled).argmax()) if labelled.size else IGNORE


def load_region_case(spec: RegionSeries, data_root: Path, manifest: ModelManifest, keep_volumes: bool = False) -> RegionCase:
    """Network input and labels of a series on ``manifest``'s grid (its slice step)."""
    vols = load_region_volumes(spec, data_root)
    xs, ys, fs = [], [], []
    for v in vols:
        x = classification_input(v, manifest, "cpu")
        y, f = slice_labels(spec, v, data_root, manifest.spacing[0])
        if spec.source == "slices":  # one file = one slice (a thick slice may give copies)
            mid = x.shape[0] // 2
            x, y, f = x[mid:mid + 1], y[mid:mid + 1], f[mid:mid + 1]
        xs.append(x)
        ys.append(y)
        fs.append(f)
    return RegionCase(spec.key, torch.cat(xs).float(), np.concatenate(ys), np.concatenate(fs), vols if keep_volumes else [])


_CACHE: dict[tuple, RegionCase] = {}


def _case(key: str, data_root: Path, manifest: ModelManifest, keep_volumes: bool = False) -> RegionCase:
    """:func:`load_region_case`, cached per process without the volumes (cross-validation and the
    final training load each series once per grid; the few MB of slices stay, the volumes not)."""
    if keep_volumes:
        return load_region_case(REGION_SERIES[key], data_root, manifest, keep_volumes=True)
    ck = (key, str(Path(data_root).resolve()), float(manifest.spacing[0]))
    if ck not in _CACHE:
        _CACHE[ck] = load_region_case(REGION_SERIES[key], data_root, manifest, keep_volumes)
    return _CACHE[ck]


# --------------------------------------------------------------------------------------------
# training


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random augmentation of a batch of slices, each sample its own draw (torch, batched).

    * geometry (probability 0.9): rotation up to 0.26 rad (15 degrees), scale 0.75-1.25 per
      axis (field of view and patient size; every slice is resized to 64 x 64 whatever its
      field of view), translation up to 6 pixels; left-right flip (probability 0.5); bilinear,
      outside filled with 0 (air);
    * blur (probability 0.2): a mix of the slice and its Gaussian blur (sigma 1 pixel), as in
      thick or soft-kernel reconstructions;
    * intensity: Gaussian noise SD 0.02 (p 0.3), scale by 0.9-1.1 (p 0.5), shift by +-0.05
      (p 0.5), gamma 0.8-1.25 (p 0.3).

    Parameters
    ----------
    x:
        float32 (batch, 1, rows, columns), windowed to [0, 1].
    gen:
        The random generator (seeded by the caller).

    Returns
    -------
    torch.Tensor
        Same shape.
    """
    import torch.nn.functional as F

    b = x.shape[0]

    def u(lo: float, hi: float, n: int = b) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    def p(prob: float) -> torch.Tensor:
        return torch.rand(b, generator=gen) < prob

    geo = p(0.9)
    angle = torch.where(geo, u(-0.26, 0.26), 0.0)
    sy = torch.where(geo, u(0.75, 1.25), 1.0)
    sx = torch.where(geo, u(0.75, 1.25), 1.0) * torch.where(p(0.5), -1.0, 1.0)
    ty = torch.where(geo, u(-6, 6) / (x.shape[2] / 2), 0.0)
    tx = torch.where(geo, u(-6, 6) / (x.shape[3] / 2), 0.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    k = torch.exp(-0.5 * torch.arange(-2, 3, dtype=torch.float32) ** 2)
    k = (k[:, None] * k[None, :]) / (k.sum() ** 2)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k[None, None])
    mix = torch.where(p(0.2), u(0.3, 1.0), 0.0)[:, None, None, None]
    x = (1 - mix) * x + mix * blurred

    x = x + torch.where(p(0.3), 0.02, 0.0)[:, None, None, None] * torch.randn(x.shape, generator=gen)
    x = x * torch.where(p(0.5), u(0.9, 1.1), 1.0)[:, None, None, None]
    x = x + torch.where(p(0.5), u(-0.05, 0.05), 0.0)[:, None, None, None]
    gamma = torch.where(p(0.3), u(0.8, 1.25), 1.0)[:, None, None, None]
    return x.clamp(min=0.0) ** gamma


class BalancedSampler:
    """Class-balanced slice sampling: a class uniformly, then a series holding that class with
    probability proportional to the square root of its number of slices of the class (large
    series do not drown small ones), then one of its slices of the class uniformly."""

    def __init__(self, cases: list[RegionCase], rng: random.Random) -> None:
        self.rng = rng
        self.pools: dict[int, list[tuple[RegionCase, np.ndarray, float]]] = {}
        for case in cases:
            for c in np.unique(case.y[case.y >= 0]):
                idx = np.flatnonzero(case.y == c)
                self.pools.setdefault(int(c), []).append((case, idx, math.sqrt(idx.size)))
        self.classes = sorted(self.pools)

    def draw(self) -> tuple[torch.Tensor, int]:
        c = self.rng.choice(self.classes)
        pool = self.pools[c]
        case, idx, _ = self.rng.choices(pool, weights=[w for _, _, w in pool])[0]
        i = int(idx[self.rng.randrange(idx.size)])
        return case.x[i], c


def _counts(cases: list[RegionCase]) -> dict[str, dict[str, int]]:
    out = {}
    for case in cases:
        row = {name: int((case.y == i).sum()) for i, name in enumerate(CLASS_NAMES)}
        row["ignored"] = int((case.y == IGNORE).sum())
        out[case.key] = row
    return out


def export_torchscript(net: torch.nn.Module, path: Path) -> Path:
    """Trace ``net`` (eval mode, CPU) on a (2, 1, 64, 64) input and save it; checks the traced
    module gives the network's output for another batch size."""
    net = net.eval().cpu()
    example = torch.rand((2, 1, *REGION_PATCH[1:]))
    with torch.no_grad():
        traced = torch.jit.trace(net, example)
        probe = torch.rand((5, 1, *REGION_PATCH[1:]))
        if not torch.allclose(traced(probe), net(probe), atol=1e-5):
            raise RuntimeError("traced network differs from the network")
    traced.save(str(path))
    return path


def train_region_model(
    output_dir: Path,
    data_root: Path | None = None,
    holdout: list[str] | tuple[str, ...] = (),
    seed: int = 0,
    iterations: int = 1000,
    max_minutes: float = 5.0,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    version: str = "1.0.0",
    slice_mm: float = TRAIN_SLICE_MM,
    evaluate: bool = True,
    crossvalidation: dict | None = None,
) -> dict:
    """Train the body-region classifier and write its model package.

    Writes ``output_dir/model.ts`` (TorchScript, traced), ``manifest.json`` (with its sha256)
    and ``training_log.json``; an existing ``MODEL_CARD.md`` / ``DATA_LICENSES.md`` is kept.

    Parameters
    ----------
    output_dir:
        Package folder (created).
    data_root:
        Folder of the real data; default ``<repo>/../shared/data``.
    holdout:
        Keys of :data:`REGION_SERIES` left out of training and scored (per slice and per series)
        with the written package.
    seed:
        Seeds Python, NumPy, torch and the MONAI transforms; same machine and thread count give
        the same weights.
    iterations:
        Optimiser steps (batch ``batch_size`` slices, class-balanced: :class:`BalancedSampler`).
    max_minutes:
        Wall-clock limit of the optimisation; stops early (``stopped_early``) when reached.
    learning_rate:
        Peak AdamW learning rate (linear warm-up over 5 %, cosine decay).
    slice_mm:
        Slice step of the training grid (mm); the package's grid stays 5 mm.
    evaluate:
        Score the held-out series and :data:`EXTERNAL_IMAGES` with the written package.
    crossvalidation:
        A :func:`crossvalidate_region` report to keep in ``training_log.json`` (its summary
        and each fold's held-out scores), e.g. for the package trained on all series.

    Returns
    -------
    dict
        ``series``, ``holdout``, ``train_slices`` (per series and class), ``iterations``,
        ``stopped_early``, ``prepare_s``, ``wall_s`` (optimisation), ``total_s``,
        ``final_loss``, ``parameters``, ``sha256``, ``weights_bytes``, ``threads``, and with
        ``evaluate`` ``heldout`` and ``external`` (see :func:`evaluate_region_package`).

    Raises
    ------
    ValueError
        If ``holdout`` names an unknown series or leaves a class without training slices.
    """
    t_start = time.perf_counter()
    output_dir = Path(output_dir)
    data_root = Path(data_root) if data_root is not None else default_data_root()
    holdout = list(holdout)
    unknown = [h for h in holdout if h not in REGION_SERIES]
    if unknown:
        raise ValueError(f"unknown holdout series {unknown}; known: {sorted(REGION_SERIES)}")
    names = [k for k in REGION_SERIES if k not in holdout]

    threads = seed_everything(seed)

    manifest = region_manifest(version)
    train_manifest = region_manifest(version, slice_mm=slice_mm)
    cases = [_case(k, data_root, train_manifest) for k in names]
    missing = [CLASS_NAMES[c] for c in range(len(CLASS_NAMES)) if not any((case.y == c).any() for case in cases)]
    if missing:
        raise ValueError(f"holdout {holdout} leaves no training slices of {missing}")
    prepare_s = time.perf_counter() - t_start
    counts = _counts(cases)
    logger.info("prepared %s in %.1f s: %s", names, prepare_s, counts)

    net = build_region_network()
    n_params = sum(p.numel() for p in net.parameters())
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    gen = torch.Generator().manual_seed(seed)
    sampler = BalancedSampler(cases, random.Random(seed))

    def batch_loss(step: int) -> torch.Tensor:
        drawn = [sampler.draw() for _ in range(batch_size)]
        x = augment_batch(torch.stack([d[0] for d in drawn]), gen)
        y = torch.tensor([d[1] for d in drawn])
        return loss_fn(net(x), y)

    run = optimise(net, batch_loss, iterations=iterations, learning_rate=learning_rate, max_minutes=max_minutes,
                   log_every=50)
    done, wall_s, losses, stopped_early = run.steps, run.wall_s, run.losses, run.stopped_early

    output_dir.mkdir(parents=True, exist_ok=True)
    weights = export_torchscript(net, output_dir / manifest.weights)
    manifest.sha256 = sha256_of(weights)
    write_manifest(output_dir, manifest)
    report = {
        "series": names,
        "holdout": holdout,
        "seed": seed,
        "train_slice_mm": slice_mm,
        "train_slices": counts,
        "iterations": done,
        "batch_size": batch_size,
        "stopped_early": stopped_early,
        "prepare_s": round(prepare_s, 1),
        "wall_s": round(wall_s, 1),
        "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
        "parameters": n_params,
        "weights_bytes": weights.stat().st_size,
        "sha256": manifest.sha256,
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    if evaluate:
        report.update(evaluate_region_package(output_dir, data_root, holdout))
    if crossvalidation is not None:
        report["crossvalidation"] = {
            k: v for k, v in crossvalidation.items() if k != "folds"
        } | {
            "folds": [
                {k: f[k] for k in ("holdout", "iterations", "wall_s", "final_loss", "heldout", "external") if k in f}
                for f in crossvalidation.get("folds", [])
            ]
        }
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    (output_dir / "training_log.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


# --------------------------------------------------------------------------------------------
# evaluation


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int = len(CLASS_NAMES)) -> list[list[int]]:
    """Counts ``[true][predicted]`` over the entries with ``y_true >= 0``."""
    m = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(np.asarray(y_true), np.asarray(y_pred), strict=False):
        if t >= 0:
            m[int(t), int(p)] += 1
    return m.tolist()


def evaluate_region_package(package_dir: Path, data_root: Path | None = None, keys: list[str] | tuple[str, ...] = (),
                            external: bool = True) -> dict:
    """Score a body-region package on series of :data:`REGION_SERIES` and on :data:`EXTERNAL_IMAGES`.

    Slices are made with the package's own manifest (5 mm grid) by :func:`classification_input`
    and run through the loaded package (its TorchScript), so this is the inference path.
    Series level: the probabilities :meth:`ClassificationModel.predict` returns for the series
    (the mean over all its slices, labelled or not; for a slab of one-slice volumes, the mean
    over its slices), compared with the series' most frequent slice label.

    Returns
    -------
    dict
        ``heldout`` (when ``keys``): ``slices`` {n, correct, accuracy, confusion [true][pred]},
        ``series`` {n, correct, accuracy}, ``per_series`` (slice counts, slice accuracy,
        reference, prediction, probabilities); ``external`` (when ``external``): per image
        reference, prediction, probabilities, plus n / correct / accuracy / confusion.
    """
    data_root = Path(data_root) if data_root is not None else default_data_root()
    model = ClassificationModel.load(package_dir, device="cpu")
    out: dict = {}
    if keys:
        y_all, p_all, per_series = [], [], {}
        series_ok = 0
        for key in keys:
            case = _case(key, data_root, model.manifest, keep_volumes=True)
            probs = model.probabilities(case.x).cpu().numpy()
            pred = probs.argmax(1)
            if REGION_SERIES[key].source == "slices":
                series_probs = probs.mean(0)
            else:
                result, _ = model.predict(case.volumes[0])
                series_probs = np.asarray(result.probabilities)
            labelled = case.y >= 0
            y_all.append(case.y)
            p_all.append(pred)
            ref = case.reference
            top = int(series_probs.argmax())
            series_ok += int(top == ref)
            per_series[key] = {
                "slices": int(case.y.size),
                "labelled": int(labelled.sum()),
                "slice_correct": int((pred[labelled] == case.y[labelled]).sum()),
                "slice_accuracy": round(float((pred[labelled] == case.y[labelled]).mean()), 4) if labelled.any() else None,
                "confusion": confusion_matrix(case.y, pred),
                "reference": CLASS_NAMES[ref],
                "predicted": CLASS_NAMES[top],
                "probabilities": {n: round(float(p), 4) for n, p in zip(CLASS_NAMES, series_probs, strict=False)},
                "unlabelled_predicted": {n: int(((pred == i) & ~labelled).sum()) for i, n in enumerate(CLASS_NAMES)},
            }
        y = np.concatenate(y_all)
        p = np.concatenate(p_all)
        ok = int((p[y >= 0] == y[y >= 0]).sum())
        n = int((y >= 0).sum())
        out["heldout"] = {
            "slices": {"n": n, "correct": ok, "accuracy": round(ok / n, 4) if n else None,
                       "confusion": confusion_matrix(y, p)},
            "series": {"n": len(keys), "correct": series_ok, "accuracy": round(series_ok / len(keys), 4)},
            "per_series": per_series,
        }
    if external:
        rows, y_ext, p_ext = {}, [], []
        for name, rel, label in EXTERNAL_IMAGES:
            path = data_root / rel
            if not path.exists():
                continue
            vol = load_series([path])
            result, _ = model.predict(vol)
            top = int(np.argmax(result.probabilities))
            rows[name] = {"reference": CLASS_NAMES[label], "predicted": CLASS_NAMES[top],
                          "probabilities": {n: round(float(q), 4) for n, q in zip(CLASS_NAMES, result.probabilities, strict=False)}}
            y_ext.append(label)
            p_ext.append(top)
        ok = int(sum(a == b for a, b in zip(y_ext, p_ext, strict=False)))
        out["external"] = {"n": len(y_ext), "correct": ok, "accuracy": round(ok / len(y_ext), 4) if y_ext else None,
                           "confusion": confusion_matrix(np.array(y_ext), np.array(p_ext)), "images": rows}
    return out


def crossvalidate_region(
    output_dir: Path,
    data_root: Path | None = None,
    folds: tuple[tuple[str, ...], ...] = CV_FOLDS,
    **train_kwargs,
) -> dict:
    """Train one model per fold (holding that fold's series out) into ``output_dir/fold-<i>``
    and pool the held-out scores.

    Returns
    -------
    dict
        ``folds`` (each fold's training report), ``slices`` {n, correct, accuracy, confusion}
        and ``series`` {n, correct, accuracy} pooled over the folds' held-out series, and
        ``external`` per fold (accuracy on :data:`EXTERNAL_IMAGES`).
    """
    output_dir = Path(output_dir)
    reports = []
    for i, holdout in enumerate(folds):
        reports.append(train_region_model(output_dir / f"fold-{i}", data_root, holdout=list(holdout), **train_kwargs))
    conf = np.sum([np.array(r["heldout"]["slices"]["confusion"]) for r in reports], axis=0)
    n = int(conf.sum())
    ok = int(np.trace(conf))
    s_n = sum(r["heldout"]["series"]["n"] for r in reports)
    s_ok = sum(r["heldout"]["series"]["correct"] for r in reports)
    return {
        "folds": reports,
        "slices": {"n": n, "correct": ok, "accuracy": round(ok / n, 4) if n else None, "confusion": conf.tolist()},
        "series": {"n": s_n, "correct": s_ok, "accuracy": round(s_ok / s_n, 4) if s_n else None},
        "external": [r.get("external", {}).get("accuracy") for r in reports],
    }


def classify_path(package_dir: Path, path: Path, device: str | None = "cpu") -> dict:
    """Classify one series with a package: a DICOM folder, a DICOM file or a NIfTI CT.

    A DICOM folder that :func:`load_series` refuses for its geometry (gantry tilt, uneven
    spacing) is classified slice by slice (:func:`slice_volumes`), the probabilities averaged
    over its slices as the runtime does for ``input = "slices"``.

    Returns
    -------
    dict
        ``findings`` (:meth:`ClassResult.as_findings`), ``slices``, ``load_s`` (reading the
        series), ``model_load_s`` and ``predict_s`` (s), ``per_slice`` (True when read slice by
        slice).

    Raises
    ------
    dicom_ai.infer.volume.VolumeError
        If the series cannot be read at all.
    """
    path = Path(path)
    t0 = time.perf_counter()
    per_slice = False
    if path.name.endswith((".nii", ".nii.gz")):
        volumes = [volume_from_nifti(path)]
    elif path.is_dir():
        files = series_files(path)
        try:
            volumes = [load_series(files)]
        except IrregularGrid:
            volumes, per_slice = slice_volumes(files), True
    else:
        volumes = [load_series([path])]
    t1 = time.perf_counter()
    model = ClassificationModel.load(package_dir, device=device)
    t2 = time.perf_counter()
    if not per_slice:
        result, _ = model.predict(volumes[0])
    else:
        probs = []
        for v in volumes:
            x = classification_input(v, model.manifest, model.device)
            with torch.inference_mode():
                probs.append(torch.softmax(model.predictor(x).float(), dim=1).cpu())
        mean = torch.cat(probs).mean(0).tolist()
        result = ClassResult(model.manifest.classes, mean, model.manifest.attention_below)
    t3 = time.perf_counter()
    slices = sum(
        resampled_shape(canonical_transform(v).shape, canonical_transform(v).spacing, model.manifest.spacing)[0]
        if not per_slice else 1
        for v in volumes
    )
    return {
        "findings": result.as_findings(),
        "slices": slices,
        "per_slice": per_slice,
        "load_s": round(t1 - t0, 3),
        "model_load_s": round(t2 - t1, 3),
        "predict_s": round(t3 - t2, 3),
    }

"""Training of the default lung model (3D U-Net, MONAI) and writing its model package.

Recipe (fixed seed, CPU friendly):

* data: the series of :data:`dicom_ai.train.data.LUNG_SERIES` (minus ``holdout``), on the
  canonical model grid (``LUNG_SPACING`` mm), windowed ``LUNG_WINDOW`` HU -> [0, 1];
* patches of ``LUNG_PATCH`` voxels sampled 2:1 around lung / elsewhere
  (``RandCropByPosNegLabeld``), volumes smaller than a patch padded with 0 (air);
* augmentation (MONAI): random affine (rotation up to 0.15 rad about the cranio-caudal axis and
  0.08 rad about the others, scale +-10 %, translation), Gaussian noise, intensity scale and
  shift, gamma contrast. No left-right flip: it would swap the left and right lung labels;
* loss ``DiceCELoss`` (softmax, one-hot targets), AdamW, learning rate with linear warm-up and
  cosine decay, ``iterations`` steps of batch 2;
* the network: ``monai.networks.nets.UNet`` (:data:`dicom_ai.infer.network.LUNG_UNET_PARAMS`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicom_ai.infer.network import LUNG_UNET_PARAMS, build_network
from dicom_ai.models.manifest import Code, Label, ModelManifest, NetworkSpec, sha256_of
from dicom_ai.train.data import LUNG_SERIES, Case, default_data_root, load_case

logger = logging.getLogger(__name__)

#: Model grid spacing (z, y, x) in mm: 3 mm isotropic suits 1 mm and 5 mm series alike.
LUNG_SPACING: tuple[float, float, float] = (3.0, 3.0, 3.0)
#: Intensity window in HU.
LUNG_WINDOW: tuple[float, float] = (-1000.0, 500.0)
#: Patch (z, y, x) in voxels: 192 x 384 x 384 mm, the whole chest width, so the network sees
#: the mediastinum and both sides when telling left from right.
LUNG_PATCH: tuple[int, int, int] = (64, 128, 128)

SCT_ANATOMICAL_STRUCTURE = Code(value="123037004", scheme="SCT", meaning="Anatomical Structure")
LUNG_LABELS = [
    Label(
        value=1,
        name="Left lung",
        category=SCT_ANATOMICAL_STRUCTURE,
        type=Code(value="44029006", scheme="SCT", meaning="Left lung"),
        color=(230, 90, 60),
    ),
    Label(
        value=2,
        name="Right lung",
        category=SCT_ANATOMICAL_STRUCTURE,
        type=Code(value="3341006", scheme="SCT", meaning="Right lung"),
        color=(60, 160, 230),
    ),
]


def lung_manifest(version: str = "1.0.0") -> ModelManifest:
    """The manifest of the lung model (without sha256, filled in when the weights are saved)."""
    return ModelManifest(
        name="dicom-ai-lung",
        version=version,
        task="segmentation",
        description="Left and right lung segmentation of chest CT (3D U-Net, MONAI); research use only",
        modality="CT",
        body_region="CHEST",
        spacing=LUNG_SPACING,
        window=LUNG_WINDOW,
        patch_size=LUNG_PATCH,
        network=NetworkSpec(arch="monai.networks.nets.UNet", params=dict(LUNG_UNET_PARAMS)),
        weights="model.pt",
        labels=LUNG_LABELS,
        license="Apache-2.0 (weights); training data CC BY 3.0 / CC BY 4.0 / Apache-2.0, see DATA_LICENSES.md",
        model_card="MODEL_CARD.md",
        min_slices=10,
    )


def _transforms(patch: tuple[int, int, int], seed: int):
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    t = Compose(
        [
            SpatialPadd(keys, spatial_size=patch, mode="constant", value=0),
            RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=2, neg=1, num_samples=1),
            RandAffined(
                keys,
                prob=0.8,
                rotate_range=(0.15, 0.08, 0.08),
                scale_range=(0.1, 0.1, 0.1),
                translate_range=(4, 8, 8),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
                spatial_size=patch,
            ),
            RandGaussianNoised("image", prob=0.3, std=0.02),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            RandShiftIntensityd("image", offsets=0.05, prob=0.5),
            RandAdjustContrastd("image", prob=0.3, gamma=(0.8, 1.25)),
        ]
    )
    t.set_random_state(seed=seed)
    return t


def _batch(cases: list[Case], transforms, rng: random.Random, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for _ in range(batch_size):
        case = rng.choice(cases)
        out = transforms({"image": case.image, "label": case.label})
        out = out[0] if isinstance(out, list) else out
        images.append(torch.as_tensor(out["image"]).float())
        labels.append(torch.as_tensor(out["label"]).float())
    return torch.stack(images), torch.stack(labels)


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
        out[v] = float(metric(p, r)[0, 0])
    return out


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy, torch and MONAI (deterministic algorithms) and let torch use every
    core; returns the number of threads."""
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


@dataclass
class Optimised:
    """What :func:`optimise` did: optimiser steps taken, the loss of each, whether
    ``max_minutes`` stopped it early, and its wall time in s."""

    steps: int
    losses: list[float]
    stopped_early: bool
    wall_s: float


def optimise(
    net: torch.nn.Module,
    batch_loss: Callable[[int], torch.Tensor],
    *,
    iterations: int,
    learning_rate: float,
    max_minutes: float,
    log_every: int = 25,
) -> Optimised:
    """Train ``net`` for ``iterations`` steps of AdamW (weight decay 1e-4; Loshchilov & Hutter,
    ICLR 2019), the learning rate rising linearly over the first 5 % of the steps, then falling
    along a cosine to 2 % of ``learning_rate`` (SGDR, Loshchilov & Hutter, ICLR 2017).

    Parameters
    ----------
    batch_loss:
        Draws the next batch and returns its loss (a scalar tensor with a graph); called with
        the step number.
    max_minutes:
        Wall-clock stop: no step starts after this many minutes.
    """
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    warmup = max(1, iterations // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(1, iterations - warmup)
        return learning_rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))

    t_train = time.perf_counter()
    losses: list[float] = []
    stopped_early = False
    step = 0
    for step in range(iterations):
        if (time.perf_counter() - t_train) / 60.0 > max_minutes:
            stopped_early = True
            logger.warning("max_minutes=%.1f reached after %d iterations", max_minutes, step)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(step)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == iterations - 1:
            logger.info("step %d/%d loss %.4f (mean of last %d %.4f) lr %.2e %.0f s", step, iterations, losses[-1],
                        log_every, float(np.mean(losses[-log_every:])), lr_at(step), time.perf_counter() - t_train)
    return Optimised(step + (0 if stopped_early else 1), losses, stopped_early, time.perf_counter() - t_train)


def train_lung_model(
    output_dir: Path,
    data_root: Path | None = None,
    holdout: list[str] | None = None,
    seed: int = 0,
    max_minutes: float = 25.0,
    iterations: int = 700,
    batch_size: int = 2,
    learning_rate: float = 2e-3,
    version: str = "1.0.0",
) -> dict:
    """Train the lung U-Net and write a model package (``manifest.json`` + ``model.pt``).

    Parameters
    ----------
    output_dir:
        Package folder to write (created). An existing ``MODEL_CARD.md`` there is kept.
    data_root:
        Folder of the real data; default ``<repo>/../shared/data``.
    holdout:
        Keys of :data:`dicom_ai.train.data.LUNG_SERIES` left out of training
        (``"lidc"``, ``"crlm"``, ``"totalseg"``).
    seed:
        Seeds Python, NumPy, torch and the MONAI transforms (``monai.utils.set_determinism``).
        On the same machine and thread count the run is repeatable.
    max_minutes:
        Wall-clock safety limit; training stops early (and says so) when it is reached.
    iterations:
        Optimiser steps.
    batch_size:
        Patches per step.
    learning_rate:
        Peak AdamW learning rate.
    version:
        Model version written into the manifest.

    Returns
    -------
    dict
        ``series`` (trained on), ``iterations`` (done), ``stopped_early``, ``wall_s`` (training
        wall time, s), ``prepare_s`` (data loading and labelling, s), ``final_loss``,
        ``train_dice`` (per series, per label name, on the model grid), ``weights_bytes``,
        ``sha256``, ``threads``.

    Raises
    ------
    ValueError
        If ``holdout`` names an unknown series or leaves nothing to train on.
    """
    from monai.losses import DiceCELoss

    t_start = time.perf_counter()
    output_dir = Path(output_dir)
    data_root = Path(data_root) if data_root is not None else default_data_root()
    holdout = list(holdout or [])
    unknown = [h for h in holdout if h not in LUNG_SERIES]
    if unknown:
        raise ValueError(f"unknown holdout series {unknown}; known: {sorted(LUNG_SERIES)}")
    names = [n for n in LUNG_SERIES if n not in holdout]
    if not names:
        raise ValueError("holdout leaves no series to train on")

    threads = seed_everything(seed)

    manifest = lung_manifest(version)
    cases = [load_case(LUNG_SERIES[n], data_root, manifest.spacing, manifest.window) for n in names]
    prepare_s = time.perf_counter() - t_start
    logger.info("prepared %s in %.1f s", names, prepare_s)

    net = build_network(manifest.network)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    transforms = _transforms(tuple(manifest.patch_size), seed)
    rng = random.Random(seed)

    def batch_loss(step: int) -> torch.Tensor:
        x, y = _batch(cases, transforms, rng, batch_size)
        return loss_fn(net(x), y)

    run = optimise(net, batch_loss, iterations=iterations, learning_rate=learning_rate, max_minutes=max_minutes)
    done, wall_s, losses, stopped_early = run.steps, run.wall_s, run.losses, run.stopped_early

    # score on the training cases (model grid, whole volume, sliding window)
    from monai.inferers import sliding_window_inference

    net.eval()
    train_dice: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for case in cases:
            logits = sliding_window_inference(
                torch.from_numpy(case.image)[None], manifest.patch_size, 1, net, overlap=0.25, mode="gaussian"
            )
            pred = logits[0].argmax(0).numpy()
            d = dice_per_label(pred, case.label[0], [lab.value for lab in manifest.labels])
            train_dice[case.name] = {lab.name: d[lab.value] for lab in manifest.labels}

    output_dir.mkdir(parents=True, exist_ok=True)
    weights = output_dir / manifest.weights
    torch.save({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, weights)
    manifest.sha256 = sha256_of(weights)
    (output_dir / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    report = {
        "series": names,
        "holdout": holdout,
        "seed": seed,
        "iterations": done,
        "stopped_early": stopped_early,
        "prepare_s": round(prepare_s, 1),
        "wall_s": round(wall_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "final_loss": float(np.mean(losses[-25:])) if losses else float("nan"),
        "train_dice": train_dice,
        "weights_bytes": weights.stat().st_size,
        "sha256": manifest.sha256,
        "threads": threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    (output_dir / "training_log.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report

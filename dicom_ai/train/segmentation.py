"""Training of segmentation networks on prepared cases: the slice-wise 2D U-Net and the 3D U-Net.

Both trainers take :class:`SegCase` objects (HU and labels on the model grid, canonical axes
(z, y, x): slices from inferior to superior, rows from anterior to posterior, columns from
patient right to left) and return a trained ``torch.nn.Module``. They share the optimisation
loop :func:`dicom_ai.train.loop.optimise` (AdamW, warm-up then cosine) and MONAI's
``DiceCELoss`` (Milletari et al. 2016 Dice plus cross-entropy). The recipes that choose data,
labels and manifests live in :mod:`dicom_ai.train.lung` (the shipped lung model) and
:mod:`dicom_ai.train.dataset` (a site's own data).

Augmentation imitates what differs between scanners and protocols (all drawn per sample,
torch, on the CPU or GPU):

* reconstruction kernel: Gaussian blur (soft kernels) or unsharp masking (sharp kernels);
* noise: Gaussian noise of 0-40 HU SD (dose, sharp kernels);
* slice thickness: 3 or 5 adjacent model slices averaged (9 or 15 mm at 3 mm slices; probability
  0.3), the partial volume effect of thick reconstructions;
* field of view and patient size: scale 0.8-1.25, rotation up to 0.2 rad, translation, on a
  fixed canvas, outside filled with air;
* calibration: HU offset of up to +-40 HU and HU scale of +-5 %.

No left-right flip: it would swap the meaning of left and right labels.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from dicom_ai.train.loop import Optimised, optimise

logger = logging.getLogger(__name__)

#: Air in HU: padding outside the image.
AIR_HU = -1000.0


@dataclass
class SegCase:
    """One training case on the model grid.

    Attributes
    ----------
    name:
        Case key (series).
    patient:
        Patient key: cross-validation folds never split a patient.
    hu:
        float32 (z, y, x), HU on the canonical model grid.
    label:
        uint8 (z, y, x), label values (0 background).
    """

    name: str
    patient: str
    hu: np.ndarray
    label: np.ndarray
    meta: dict = field(default_factory=dict)


def window01(hu: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Clip HU to ``window`` (low, high) and scale to [0, 1]."""
    lo, hi = window
    return ((hu - lo) / (hi - lo)).clamp(0.0, 1.0)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (1, 1, H, W) with ``sigma`` pixels (replicate borders)."""
    k = _gauss_kernel(sigma)
    r = (k.numel() - 1) // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


class SliceSampler:
    """Draws augmented 2D training slices (and their labels) from 3D cases.

    Each case is drawn with equal probability; within it, a slice holding foreground with
    probability ``foreground_p``, else any slice (the network must also learn to find
    nothing in the neck and abdomen).

    Parameters
    ----------
    cases:
        Training cases.
    canvas:
        Size (rows, columns) every slice is centred on before the random affine (pixels).
    out:
        Output size (rows, columns) of a training sample (pixels).
    window:
        HU window applied after augmentation.
    """

    def __init__(self, cases: list[SegCase], canvas: int, out: int, window: tuple[float, float],
                 rng: random.Random, gen: torch.Generator, foreground_p: float = 0.8, augment: bool = True) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.cases = cases
        self.canvas, self.out, self.window = canvas, out, window
        self.rng, self.gen = rng, gen
        self.foreground_p = foreground_p
        self.augment = augment
        self.fg = [np.flatnonzero(c.label.reshape(c.label.shape[0], -1).any(1)) for c in cases]

    def _u(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.gen))

    def _p(self, prob: float) -> bool:
        return float(torch.rand((), generator=self.gen)) < prob

    def _slice(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.cases[i]
        Z = case.hu.shape[0]
        fg = self.fg[i]
        z = int(fg[self.rng.randrange(fg.size)]) if fg.size and self.rng.random() < self.foreground_p else self.rng.randrange(Z)
        half = 0
        if self.augment and self._p(0.3):
            half = self.rng.choice((1, 1, 2)) if Z > 2 else 0  # 3 or 5 slices: thick reconstructions
        lo, hi = max(0, z - half), min(Z, z + half + 1)
        hu = torch.from_numpy(np.ascontiguousarray(case.hu[lo:hi])).float().mean(0)
        lab = torch.from_numpy(np.ascontiguousarray(case.label[z])).float()
        return self._centre(hu - AIR_HU), self._centre(lab)

    def _centre(self, img: torch.Tensor) -> torch.Tensor:
        """Centre (H, W) on a zero canvas of ``canvas`` x ``canvas`` (crop when larger)."""
        C = self.canvas
        H, W = img.shape
        out = torch.zeros((C, C), dtype=img.dtype)
        sy, sx = max(0, (H - C) // 2), max(0, (W - C) // 2)
        dy, dx = max(0, (C - H) // 2), max(0, (C - W) // 2)
        h, w = min(H, C), min(W, C)
        out[dy : dy + h, dx : dx + w] = img[sy : sy + h, sx : sx + w]
        return out

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: image float32 (batch, 1, out, out) windowed to [0, 1], label float32
        (batch, 1, out, out)."""
        xs, ys = [], []
        for _ in range(batch):
            x, y = self._slice(self.rng.randrange(len(self.cases)))
            x, y = self._geometry(x[None, None], y[None, None])
            if self.augment:
                x = self._intensity(x)
            xs.append(window01(x + AIR_HU, self.window))
            ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    def _geometry(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.out / self.canvas
        if self.augment:
            s = math.exp(self._u(math.log(0.8), math.log(1.25)))
            a = self._u(-0.2, 0.2)
            t = (self._u(-0.12, 0.12), self._u(-0.12, 0.12))
        else:
            s, a, t = 1.0, 0.0, (0.0, 0.0)
        c, si = math.cos(a) * f / s, math.sin(a) * f / s
        theta = torch.tensor([[[c, -si, t[0]], [si, c, t[1]]]], dtype=torch.float32)
        grid = F.affine_grid(theta, [1, 1, self.out, self.out], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return x, y

    def _intensity(self, x: torch.Tensor) -> torch.Tensor:
        """HU + 1000 in, same out: kernel, noise, calibration."""
        r = float(torch.rand((), generator=self.gen))
        if r < 0.25:
            x = _blur(x, self._u(0.5, 1.3))
        elif r < 0.5:
            x = x + self._u(0.4, 1.5) * (x - _blur(x, self._u(0.7, 1.5)))
        if self._p(0.5):
            x = x + self._u(0.0, 40.0) * torch.randn(x.shape, generator=self.gen)
        if self._p(0.5):
            x = x * self._u(0.95, 1.05) + self._u(-40.0, 40.0)
        return x


@dataclass(frozen=True)
class Schedule:
    """The optimisation settings both segmentation trainers share.

    ``iterations`` optimiser steps of :func:`~dicom_ai.train.loop.optimise` at peak
    ``learning_rate``, stopped after ``max_minutes`` of wall time; ``seed`` seeds sampling and
    augmentation; ``on_step`` is called after each step with (step, loss); ``device`` is where
    the network runs (batches are drawn and augmented on the CPU).
    """

    iterations: int
    learning_rate: float = 2e-3
    max_minutes: float = 30.0
    seed: int = 0
    on_step: Callable[[int, float], None] | None = None
    device: torch.device | str = "cpu"

    def run(self, net: torch.nn.Module, batch_loss: Callable[[int], torch.Tensor]) -> Optimised:
        """Optimise ``net`` on ``batch_loss(step)`` under this schedule."""
        return optimise(net, batch_loss, iterations=self.iterations, learning_rate=self.learning_rate,
                        max_minutes=self.max_minutes, on_step=self.on_step)


def train_slicewise(
    net: torch.nn.Module,
    cases: list[SegCase],
    schedule: Schedule,
    *,
    window: tuple[float, float],
    batch_size: int = 8,
    canvas: int = 352,
    out: int = 256,
) -> Optimised:
    """Train a 2D segmentation network slice by slice.

    Parameters
    ----------
    net:
        A 2D network (batch, 1, rows, columns) -> (batch, classes, rows, columns); trained in place.
    cases:
        Training cases, labels 0 .. classes - 1.
    window:
        HU window (low, high) scaled to [0, 1] after augmentation.
    schedule:
        Optimiser steps, learning rate, time limit, seed, step callback and device.
    batch_size:
        Slices per step.
    canvas, out:
        Every slice is centred on a ``canvas`` pixel square, then a random affine samples an
        ``out`` pixel square from it (``out / canvas`` of the field of view at scale 1).

    Returns
    -------
    Optimised
        Steps, losses, early stop, wall time.
    """
    from monai.losses import DiceCELoss

    rng = random.Random(schedule.seed)
    gen = torch.Generator().manual_seed(schedule.seed)
    sampler = SliceSampler(cases, canvas, out, window, rng, gen)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def batch_loss(step: int) -> torch.Tensor:
        x, y = sampler.draw(batch_size)
        return loss_fn(net(x.to(schedule.device)), y.to(schedule.device))

    return schedule.run(net, batch_loss)


def _volume_transforms(patch: tuple[int, int, int], seed: int):
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


def train_volumetric(
    net: torch.nn.Module,
    cases: list[SegCase],
    schedule: Schedule,
    *,
    window: tuple[float, float],
    patch: tuple[int, int, int],
    batch_size: int = 2,
) -> Optimised:
    """Train a 3D segmentation network on patches (the recipe of the 3D lung U-Net 1.0.0).

    Patches of ``patch`` voxels (z, y, x) are sampled 2:1 around foreground / elsewhere
    (MONAI ``RandCropByPosNegLabeld``) after padding with air; MONAI augmentation: random
    affine, Gaussian noise, intensity scale and shift, gamma. The kernel, thickness and HU
    augmentation of the module docstring is the slice trainer's; this is the 1.0.0 recipe.
    """
    from monai.losses import DiceCELoss

    rng = random.Random(schedule.seed)
    transforms = _volume_transforms(patch, schedule.seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    prepared = [(window01(torch.from_numpy(c.hu), window).numpy()[None], c.label[None]) for c in cases]

    def batch_loss(step: int) -> torch.Tensor:
        images, labels = [], []
        for _ in range(batch_size):
            image, label = rng.choice(prepared)
            o = transforms({"image": image, "label": label})
            o = o[0] if isinstance(o, list) else o
            images.append(torch.as_tensor(o["image"]).float())
            labels.append(torch.as_tensor(o["label"]).float())
        return loss_fn(net(torch.stack(images).to(schedule.device)), torch.stack(labels).to(schedule.device))

    return schedule.run(net, batch_loss)


def train_segmentation(net: torch.nn.Module, cases: list[SegCase], *, slicewise: bool, window: tuple[float, float],
                       patch: tuple[int, int, int], iterations: int, batch_size: int | None = None,
                       **options) -> Optimised:
    """Train a segmentation network with the trainer of its design: :func:`train_slicewise`
    for a 2D network run slice by slice, else :func:`train_volumetric` on 3D patches of
    ``patch`` voxels (z, y, x). ``batch_size`` None takes the trainer's default; ``options``
    (learning_rate, max_minutes, seed, on_step, device) make its :class:`Schedule`."""
    schedule = Schedule(iterations=iterations, **options)
    sizes = {} if batch_size is None else {"batch_size": batch_size}
    if slicewise:
        return train_slicewise(net, cases, schedule, window=window, **sizes)
    return train_volumetric(net, cases, schedule, window=window, patch=patch, **sizes)

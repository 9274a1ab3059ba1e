"""The optimisation loop every trainer shares, and seeding.

:func:`optimise` runs AdamW with a linear warm-up and a cosine decay and a wall-clock stop;
:func:`seed_everything` seeds Python, NumPy, torch and MONAI. The recipes are
:mod:`dicom_ai.train.lung` (lung segmentation), :mod:`dicom_ai.train.region` (body region)
and :mod:`dicom_ai.train.dataset` (a site's own data).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


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

    def summary(self) -> dict:
        """For a training log: steps, early stop, wall time (s) and the mean loss of the last 25 steps."""
        return {"iterations": self.steps, "stopped_early": self.stopped_early, "wall_s": round(self.wall_s, 1),
                "final_loss": float(np.mean(self.losses[-25:])) if self.losses else float("nan")}


def optimise(
    net: torch.nn.Module,
    batch_loss: Callable[[int], torch.Tensor],
    *,
    iterations: int,
    learning_rate: float,
    max_minutes: float,
    log_every: int = 25,
    on_step: Callable[[int, float], None] | None = None,
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
    on_step:
        Called after each step with (step, loss), e.g. to move a progress bar.
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
        if on_step is not None:
            on_step(step, losses[-1])
        if step % log_every == 0 or step == iterations - 1:
            logger.info("step %d/%d loss %.4f (mean of last %d %.4f) lr %.2e %.0f s", step, iterations, losses[-1],
                        log_every, float(np.mean(losses[-log_every:])), lr_at(step), time.perf_counter() - t_train)
    return Optimised(step + (0 if stopped_early else 1), losses, stopped_early, time.perf_counter() - t_train)

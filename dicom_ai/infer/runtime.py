"""Model kinds: a loaded model package of each task, run on a :class:`Volume`.

:func:`load_model` reads the manifest, checks the weights' SHA-256 and loads them with the
package's runtime (:mod:`dicom_ai.infer.runtimes`: MONAI network + state dict, TorchScript, or
ONNX through onnxruntime); it returns the class of the manifest's ``task`` (:data:`MODEL_KINDS`):
a :class:`SegmentationModel` or a :class:`ClassificationModel`.

Pipeline of :meth:`SegmentationModel.predict` (all torch, on the model's device):

1. preprocess (:mod:`dicom_ai.infer.preprocess`): reorient to the canonical axial grid
   (slices -> +z Superior, rows -> +y Posterior, columns -> +x Left, DICOM LPS) by axis
   permutation and flips, resample trilinearly to ``manifest.spacing``, clip to
   ``manifest.window`` and scale to [0, 1];
2. inference: ``monai.inferers.sliding_window_inference`` with ``manifest.patch_size``,
   overlap 0.25, gaussian blending; volumes smaller than a patch are padded by repeating
   their edge voxels ("replicate": a short series then looks like more of itself rather than
   a slab of air above and below, which raised the Dice of a 30-slice lung-base volume from
   0.27 / 0.56 to 0.67 / 0.60 before postprocessing);
3. postprocess: class scores are upsampled trilinearly back to the source extent in slabs of
   slices (bounded memory) and the argmax taken there (smooth contours, no staircase from a
   nearest-neighbour upsampling of labels), on the model's device and only within the
   bounding box of the non-background classes (outside it the argmax is 0 whatever the
   interpolation weights), the reorientation is undone, then on the CPU
   (:func:`dicom_ai.infer.postprocess.postprocess_segmentation`) class indices become the
   manifest's label values, only the largest 3D connected component of each label is kept,
   and with ``fill_holes_mm2`` in the manifest, holes inside each label are filled, each within
   the label's bounding box. The mask is uint8 (slices, rows, columns).

Slice-wise models (a 2D network, ``patch_size`` ``[1, rows, columns]``) run through the same
sliding window, one slice per window (:class:`dicom_ai.package.network.SliceWise`).

:meth:`ClassificationModel.predict` preprocesses the same way, resizes the volume (or each axial
slice) to ``manifest.patch_size``, and returns the softmax class probabilities (averaged over
slices for ``input = "slices"``).

CPU threads are a process setting, made at start-up
(:func:`dicom_ai.infer.runtimes.configure_threads`), not by loading a model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch

from dicom_ai.infer.postprocess import postprocess_segmentation
from dicom_ai.infer.preprocess import (
    CanonicalTransform,
    canonical_order,
    from_canonical,
    from_network_axes,
    preprocess_volume,
    resample,
    to_network_axes,
    upsample_argmax,
)
from dicom_ai.infer.runtimes import ModelPackageError, Runtime, load_predictor, verify_weights
from dicom_ai.infer.runtimes.base import native_autocast
from dicom_ai.infer.volume import Volume
from dicom_ai.package.manifest import ClassLabel, ModelManifest, load_manifest

log = logging.getLogger(__name__)

__all__ = ["MODEL_KINDS", "ClassResult", "ClassificationModel", "LoadedModel", "ModelPackageError",
           "Predictor", "SegmentationModel", "canonical_input", "classification_input", "default_device",
           "load_model", "load_predictor", "verify_weights"]

#: Device type -> the fewest slices a slice-wise network gets per forward pass. On the CPU a
#: few slices at a time keep a pass's activations in the caches: with the shipped lung model,
#: its 92 slices of LIDC-IDRI-0314 (320 x 320 windows, 2 threads) took 1.53 s in passes of 4
#: against 1.86 s in passes of 16. Each slice is scored alone (instance norm included), so the
#: pass size changes a score by float32 rounding in the convolutions at most (none on that
#: series, 3e-6 on CRLM-CT-1006, the same mask on both). A GPU is kept busy by larger passes.
SLICEWISE_BATCH: dict[str, int] = {"cpu": 4, "cuda": 16}

#: The network of a loaded package, whatever its runtime (the name callers knew it by).
Predictor = Runtime


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LoadedModel:
    """A loaded model package: use :func:`load_model` (or the subclass's :meth:`load`).

    Attributes
    ----------
    manifest:
        The package's manifest.
    predictor:
        The network, whatever its runtime (:class:`dicom_ai.infer.runtimes.base.Runtime`).
    device:
        Where preprocessing, inference and postprocessing run.
    load_seconds:
        Time :meth:`load` took (checksum, weights, device transfer), s.
    precision:
        ``"float32"``, or ``"bfloat16"`` when the forward pass runs under ``torch.autocast``
        (the manifest's ``autocast``, asked for with ``reduced_precision`` at :meth:`load`).
    """

    task = ""

    def __init__(self, manifest: ModelManifest, predictor: Runtime, device: torch.device,
                 load_seconds: float = 0.0):
        self.manifest = manifest
        self.predictor = predictor
        self.device = device
        self.load_seconds = load_seconds

    @property
    def network(self) -> torch.nn.Module | None:
        """The torch module (None for ONNX)."""
        return self.predictor.module

    @property
    def nbytes(self) -> int:
        """Memory the weights take, bytes."""
        return self.predictor.nbytes

    @property
    def weights_device(self) -> str:
        """``"cuda"`` or ``"cpu"``: where the weights are."""
        return self.predictor.weights_device

    @property
    def precision(self) -> str:
        dtype = self.predictor.autocast
        return "float32" if dtype is None else str(dtype).removeprefix("torch.")

    @classmethod
    def load(cls, package_dir: Path, device: str | None = None, reduced_precision: bool = False):
        """Load a model package: manifest, sha256-checked weights, its runtime.

        Parameters
        ----------
        package_dir:
            Folder with ``manifest.json`` and the weights file it names.
        device:
            ``"cuda"``, ``"cpu"``, ...; default CUDA when available, else CPU (with the threads
            the process set at start-up: :func:`dicom_ai.infer.runtimes.configure_threads`).
        reduced_precision:
            Run the forward pass in the manifest's ``autocast`` dtype (bfloat16) if it declares
            one and the device computes it natively
            (:func:`dicom_ai.infer.runtimes.base.native_autocast`); else, and by default,
            float32. Preprocessing and postprocessing stay float32.

        Raises
        ------
        FileNotFoundError
            If the manifest or the weights file is missing.
        ModelPackageError
            If the weights' SHA-256 differs from the manifest's, the runtime cannot load them,
            or the package's task is not this class's.
        """
        t0 = time.perf_counter()
        package_dir = Path(package_dir)
        manifest = load_manifest(package_dir)
        if cls.task and manifest.task != cls.task:
            raise ModelPackageError(f"model package {package_dir} is a {manifest.task} model, not {cls.task}")
        verify_weights(package_dir, manifest)
        dev = torch.device(device) if device else default_device()
        predictor = load_predictor(package_dir, manifest, dev)
        if reduced_precision and manifest.autocast is not None:
            dtype = getattr(torch, manifest.autocast)
            if native_autocast(dev, dtype) and predictor.use_autocast(dtype):
                log.info("%s: network in %s (torch.autocast) on %s", manifest.label, manifest.autocast, dev)
        return cls(manifest, predictor, dev, time.perf_counter() - t0)

    def _preprocess(self, volume: Volume):
        """(image (1, 1, a0, a1, a2) in the network's axes, canonical transform)."""
        image, tf = canonical_input(volume, self.manifest, self.device)
        return to_network_axes(image, self.manifest.axcodes), tf


def canonical_input(volume: Volume, manifest: ModelManifest, device: torch.device | str):
    """Preprocessed image (1, 1, z, y, x) on the canonical grid at the manifest's spacing."""
    spacing = canonical_order(tuple(manifest.spacing), manifest.axcodes)
    return preprocess_volume(volume, spacing, manifest.window, device, manifest.normalization)


class SegmentationModel(LoadedModel):
    """A loaded segmentation model package; :meth:`predict` for each volume."""

    task = "segmentation"

    @torch.inference_mode()
    def predict(self, volume: Volume, sw_batch_size: int = 1) -> tuple[np.ndarray, dict[str, float]]:
        """Segment a volume.

        Parameters
        ----------
        volume:
            Source volume (CT in HU), array (slices, rows, columns).
        sw_batch_size:
            Patches per forward pass of the sliding window (for a slice-wise model, whose
            patches are single slices, at least :data:`SLICEWISE_BATCH` of the device).

        Returns
        -------
        mask:
            uint8 (slices, rows, columns) on the source grid; values are the manifest's label
            values, 0 background.
        timings:
            Seconds spent in ``"preprocess"``, ``"inference"`` and ``"postprocess"``.
        """
        logits, tf, timings = self.scores(volume, sw_batch_size)
        t2 = time.perf_counter()
        mask = self.postprocess(logits, tf, volume)
        del logits
        timings["postprocess"] = time.perf_counter() - t2
        return mask, timings

    @torch.inference_mode()
    def scores(self, volume: Volume, sw_batch_size: int = 1) -> tuple[torch.Tensor, CanonicalTransform, dict[str, float]]:
        """Steps 1 and 2 of :meth:`predict`: the network's class scores of a volume.

        Returns
        -------
        logits:
            (classes, z, y, x) scores on the canonical grid at the manifest's spacing, on the
            model's device (float16 on CUDA, float32 on CPU).
        transform:
            The canonical transform of the volume (:func:`dicom_ai.infer.preprocess.canonical_transform`).
        timings:
            Seconds spent in ``"preprocess"`` and ``"inference"``.
        """
        from monai.inferers import sliding_window_inference

        m = self.manifest
        t0 = time.perf_counter()
        image, tf = self._preprocess(volume)
        self._sync()
        t1 = time.perf_counter()
        if 1 in m.patch_size:  # slice-wise network: several slices per call
            sw_batch_size = max(sw_batch_size, SLICEWISE_BATCH.get(self.device.type, 16))
        logits = sliding_window_inference(
            image,
            roi_size=tuple(m.patch_size),
            sw_batch_size=sw_batch_size,
            predictor=self.predictor,
            overlap=0.25,
            mode="gaussian",
            padding_mode="replicate",
        )
        del image
        logits = from_network_axes(logits[0], m.axcodes)
        if self.device.type == "cuda":
            logits = logits.half()
        self._sync()
        return logits, tf, {"preprocess": t1 - t0, "inference": time.perf_counter() - t1}

    @torch.inference_mode()
    def postprocess(self, logits: torch.Tensor, tf: CanonicalTransform, volume: Volume) -> np.ndarray:
        """Step 3 of :meth:`predict`: class scores from :meth:`scores` to the label mask.

        Upsampling and argmax run on the device of ``logits`` (only within the bounding box of
        the non-background classes: :func:`dicom_ai.infer.preprocess.upsample_argmax`), the
        connected components and hole filling on the CPU within each label's bounding box
        (:func:`dicom_ai.infer.postprocess.postprocess_segmentation`).

        Returns
        -------
        np.ndarray
            uint8 (slices, rows, columns) on the source grid, the manifest's label values.
        """
        canon = upsample_argmax(logits, tf.shape)
        mask = from_canonical(canon, tf).contiguous().cpu().numpy()
        del canon
        postprocess_segmentation(mask, self.manifest, volume.spacing, volume.array)
        return mask

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


class ClassResult:
    """The output of a classification model on one series.

    Attributes
    ----------
    probabilities:
        Softmax probability of each class, in manifest class-index order (sums to 1).
    top:
        The most probable class.
    """

    def __init__(self, classes: list[ClassLabel], probabilities: list[float],
                 attention_below: float | None = None) -> None:
        self.classes = sorted(classes, key=lambda c: c.index)
        self.probabilities = probabilities
        self.top = self.classes[int(np.argmax(probabilities))]
        self.attention_below = attention_below

    @property
    def attention(self) -> bool:
        """The result needs a look: its class is marked ``attention``, or it is uncertain
        (probability below the manifest's ``attention_below``)."""
        below = self.attention_below is not None and self.probability < self.attention_below
        return self.top.attention or below

    @property
    def probability(self) -> float:
        """Probability of :attr:`top`."""
        return self.probabilities[self.top.index]

    def as_findings(self) -> dict:
        """The job's findings: class, probability, attention flag and every class's probability."""
        return {
            "class": self.top.name,
            "probability": round(self.probability, 4),
            "attention": self.attention,
            "probabilities": {c.name: round(p, 4) for c, p in zip(self.classes, self.probabilities, strict=False)},
        }


def classification_input(volume: Volume, manifest: ModelManifest, device: torch.device | str = "cpu") -> torch.Tensor:
    """The network input of a classification model for a volume.

    Preprocessing as for segmentation (canonical orientation, ``manifest.spacing``,
    normalisation), then resized trilinearly to ``manifest.patch_size``: the whole volume
    (``input = "volume"``: tensor (1, 1, a0, a1, a2) in ``manifest.axcodes`` order) or each
    axial slice (``input = "slices"``: tensor (slices, 1, rows, columns) of the canonical grid,
    slices from inferior to superior; ``axcodes`` is not used).
    Training (:mod:`dicom_ai.train.region`) uses this same function.
    """
    image, _ = canonical_input(volume, manifest, device)
    size = cast("tuple[int, int, int]", tuple(manifest.patch_size))  # ModelManifest: 3 values
    if manifest.input == "volume":
        return resample(to_network_axes(image, manifest.axcodes), size, mode="trilinear")
    # (1, 1, z, y, x) -> (z, 1, y, x) -> each slice to (rows, columns)
    slices = image[0].permute(1, 0, 2, 3)
    return torch.nn.functional.interpolate(slices, size=size[1:], mode="bilinear", align_corners=False)


class ClassificationModel(LoadedModel):
    """A loaded classification model package; :meth:`predict` for each volume."""

    task = "classification"

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Softmax class probabilities (inputs, classes) of network inputs ``x`` (from
        :func:`classification_input`), run ``batch_size`` at a time (fewer if the runtime
        takes fewer).

        Raises
        ------
        ModelPackageError
            If the network's output does not have one channel per manifest class.
        """
        probs = []
        batch_size = min(batch_size, self.predictor.max_batch or batch_size)
        for start in range(0, x.shape[0], batch_size):
            logits = self.predictor(x[start:start + batch_size].to(self.device))
            if logits.ndim != 2 or logits.shape[1] != len(self.manifest.classes):
                raise ModelPackageError(
                    f"{self.manifest.label}: output shape {tuple(logits.shape)}, expected (batch, "
                    f"{len(self.manifest.classes)}) for its classes"
                )
            probs.append(torch.softmax(logits.float(), dim=1))
        return torch.cat(probs)

    @torch.inference_mode()
    def predict(self, volume: Volume, batch_size: int = 64) -> tuple[ClassResult, dict[str, float]]:
        """Classify a volume.

        Parameters
        ----------
        volume:
            Source volume (CT in HU), array (slices, rows, columns).
        batch_size:
            Slices per forward pass (``input = "slices"``).

        Returns
        -------
        result:
            Class probabilities and the top class.
        timings:
            Seconds spent in ``"preprocess"`` and ``"inference"``.

        Raises
        ------
        ModelPackageError
            If the network's output does not have one channel per manifest class.
        """
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        x = classification_input(volume, self.manifest, self.device)
        sync()
        t1 = time.perf_counter()
        mean = self.probabilities(x, batch_size).mean(dim=0).cpu().tolist()
        sync()
        t2 = time.perf_counter()
        return ClassResult(self.manifest.classes, mean, self.manifest.attention_below), {"preprocess": t1 - t0, "inference": t2 - t1}


#: Manifest ``task`` -> the class that loads and runs a package of that task.
MODEL_KINDS: dict[str, type[LoadedModel]] = {"segmentation": SegmentationModel,
                                              "classification": ClassificationModel}


def load_model(package_dir: Path, device: str | None = None,
               reduced_precision: bool = False) -> SegmentationModel | ClassificationModel:
    """Load a model package as the class of its task (:data:`MODEL_KINDS`; see
    :meth:`LoadedModel.load`)."""
    task = load_manifest(Path(package_dir)).task
    cls = MODEL_KINDS.get(task, ClassificationModel)
    return cls.load(package_dir, device=device, reduced_precision=reduced_precision)

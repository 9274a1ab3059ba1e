"""Model runtime: load a model package (any runtime), run it on a :class:`Volume`.

:func:`load_model` reads the manifest, checks the weights' SHA-256 and loads them with the
package's runtime (:class:`Predictor`: MONAI network + state dict, TorchScript, or ONNX through
onnxruntime); it returns a :class:`SegmentationModel` or a :class:`ClassificationModel`.

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
   nearest-neighbour upsampling of labels), the reorientation is undone, and for each label
   only the largest 3D connected component is kept. The mask is uint8 with the manifest's
   label values; with ``fill_holes_mm2`` in the manifest, holes inside each label are filled
   (:mod:`dicom_ai.infer.postprocess`).

Slice-wise models (a 2D network, ``patch_size`` ``[1, rows, columns]``) run through the same
sliding window, one slice per window (:class:`dicom_ai.infer.network.SliceWise`).

:meth:`ClassificationModel.predict` preprocesses the same way, resizes the volume (or each axial
slice) to ``manifest.patch_size``, and returns the softmax class probabilities (averaged over
slices for ``input = "slices"``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from dicom_ai.infer.network import SliceWise, build_network, is_slicewise
from dicom_ai.infer.postprocess import fill_small_holes, keep_largest_component
from dicom_ai.infer.preprocess import (
    canonical_order,
    from_canonical,
    from_network_axes,
    preprocess_volume,
    resample,
    to_network_axes,
    upsample_argmax,
)
from dicom_ai.infer.volume import Volume
from dicom_ai.models.manifest import ClassLabel, ModelManifest, load_manifest, sha256_of

logger = logging.getLogger(__name__)


class ModelPackageError(RuntimeError):
    """The model package is unusable (missing or corrupted weights, wrong network)."""


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """The network of a package behind one call: ``predictor(x)`` takes a float32 tensor
    (batch, channels, spatial...) on the model's device and returns the network's raw output
    (logits) there, whatever the runtime.

    Attributes
    ----------
    module:
        The torch module (runtimes ``monai`` and ``torchscript``), else None.
    nbytes:
        Memory the weights take (parameters and buffers; the ONNX file's size for ``onnx``).
    max_batch:
        The most inputs one call takes (an ONNX graph exported with a fixed batch size), else None.
    weights_device:
        Where the weights are: ``"cuda"`` (GPU memory) or ``"cpu"`` (RAM).
    """

    def __init__(self, fn, nbytes: int, module: torch.nn.Module | None = None, max_batch: int | None = None,
                 weights_device: str = "cpu") -> None:
        self._fn = fn
        self.nbytes = nbytes
        self.module = module
        self.max_batch = max_batch
        self.weights_device = weights_device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


def _module_bytes(module: torch.nn.Module) -> int:
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def load_predictor(package_dir: Path, manifest: ModelManifest, device: torch.device) -> Predictor:
    """Load the weights of a package with its runtime, on ``device``.

    Raises
    ------
    ModelPackageError
        If the weights cannot be loaded by the runtime, or do not fit the network.
    """
    weights = Path(package_dir) / manifest.weights
    if manifest.runtime == "monai":
        try:
            network = build_network(manifest.network)
        except (ValueError, TypeError) as exc:
            raise ModelPackageError(f"model package {package_dir}: network: {exc}") from exc
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle / zip errors of a bad file
            raise ModelPackageError(f"model package {package_dir}: {manifest.weights} is not a state dict: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            network.load_state_dict({k: v.float() for k, v in state.items()})
        except (RuntimeError, AttributeError) as exc:
            raise ModelPackageError(f"model package {package_dir}: weights do not fit the network: {exc}") from exc
        network.to(device).eval()
        fn = SliceWise(network) if is_slicewise(manifest.network) else network
        return Predictor(fn, _module_bytes(network), fn, weights_device=device.type)
    if manifest.runtime == "torchscript":
        try:
            module = torch.jit.load(str(weights), map_location=device)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / ValueError variants
            raise ModelPackageError(f"model package {package_dir}: {manifest.weights} is not TorchScript: {exc}") from exc
        module.eval()
        return Predictor(module, _module_bytes(module), module, weights_device=device.type)
    return _onnx_predictor(package_dir, weights, device)


def _onnx_predictor(package_dir: Path, weights: Path, device: torch.device) -> Predictor:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
    try:
        session = ort.InferenceSession(str(weights), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelPackageError(f"model package {package_dir}: {weights.name} is not a usable ONNX model: {exc}") from exc
    input_name = session.get_inputs()[0].name
    if device.type == "cuda" and providers[0] != "CUDAExecutionProvider":
        logger.warning("onnxruntime has no CUDA provider here; %s runs on the CPU", weights.name)

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {input_name: x.detach().to("cpu", torch.float32).numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    batch = session.get_inputs()[0].shape[0]
    return Predictor(run, weights.stat().st_size, max_batch=batch if isinstance(batch, int) and batch > 0 else None,
                     weights_device="cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu")


class LoadedModel:
    """A loaded model package: use :func:`load_model` (or the subclass's :meth:`load`).

    Attributes
    ----------
    manifest:
        The package's manifest.
    predictor:
        The network, whatever its runtime (:class:`Predictor`).
    device:
        Where preprocessing, inference and postprocessing run.
    load_seconds:
        Time :meth:`load` took (checksum, weights, device transfer), s.
    """

    task = ""

    def __init__(self, manifest: ModelManifest, predictor: Predictor, device: torch.device,
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

    @classmethod
    def load(cls, package_dir: Path, device: str | None = None):
        """Load a model package: manifest, sha256-checked weights, its runtime.

        Parameters
        ----------
        package_dir:
            Folder with ``manifest.json`` and the weights file it names.
        device:
            ``"cuda"``, ``"cpu"``, ...; default CUDA when available, else CPU (then torch uses
            all cores: ``torch.set_num_threads(os.cpu_count())``).

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
        if dev.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        predictor = load_predictor(package_dir, manifest, dev)
        return cls(manifest, predictor, dev, time.perf_counter() - t0)

    def _preprocess(self, volume: Volume):
        """(image (1, 1, a0, a1, a2) in the network's axes, canonical transform)."""
        image, tf = canonical_input(volume, self.manifest, self.device)
        return to_network_axes(image, self.manifest.axcodes), tf


def canonical_input(volume: Volume, manifest: ModelManifest, device: torch.device | str):
    """Preprocessed image (1, 1, z, y, x) on the canonical grid at the manifest's spacing."""
    spacing = canonical_order(tuple(manifest.spacing), manifest.axcodes)
    return preprocess_volume(volume, spacing, manifest.window, device, manifest.normalization)


def verify_weights(package_dir: Path, manifest: ModelManifest) -> None:
    """Check the weights file exists and has the manifest's SHA-256.

    Raises
    ------
    FileNotFoundError
        If the weights file is missing.
    ModelPackageError
        If its SHA-256 differs from the manifest's.
    """
    weights = Path(package_dir) / manifest.weights
    if not weights.is_file():
        raise FileNotFoundError(f"model package {package_dir}: weights file {manifest.weights} is missing")
    if manifest.sha256:
        digest = sha256_of(weights)
        if digest.lower() != manifest.sha256.lower():
            raise ModelPackageError(
                f"model package {package_dir}: SHA-256 of {manifest.weights} is {digest}, "
                f"the manifest says {manifest.sha256}; the file is corrupted or was replaced"
            )
    else:
        logger.warning("model package %s: no sha256 in the manifest, weights not verified", package_dir)


def load_model(package_dir: Path, device: str | None = None) -> "SegmentationModel | ClassificationModel":
    """Load a model package as the class of its task (see :meth:`LoadedModel.load`)."""
    task = load_manifest(Path(package_dir)).task
    cls = SegmentationModel if task == "segmentation" else ClassificationModel
    return cls.load(package_dir, device=device)


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
            Patches per forward pass of the sliding window (at least 16 for a slice-wise
            model, whose patches are single slices).

        Returns
        -------
        mask:
            uint8 (slices, rows, columns) on the source grid; values are the manifest's label
            values, 0 background.
        timings:
            Seconds spent in ``"preprocess"``, ``"inference"`` and ``"postprocess"``.
        """
        from monai.inferers import sliding_window_inference

        m = self.manifest
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        image, tf = self._preprocess(volume)
        sync()
        t1 = time.perf_counter()
        if 1 in m.patch_size:  # slice-wise network: batch many slices per call
            sw_batch_size = max(sw_batch_size, 16)
        logits = sliding_window_inference(
            image,
            roi_size=tuple(m.patch_size),
            sw_batch_size=sw_batch_size,
            predictor=self.predictor,
            overlap=0.25,
            mode="gaussian",
            padding_mode="replicate",
        )
        logits = from_network_axes(logits[0], m.axcodes)
        if self.device.type == "cuda":
            logits = logits.half()
        sync()
        t2 = time.perf_counter()
        # class index -> manifest label value (index 0 is background)
        values = [0] + [lab.value for lab in m.labels]
        canon = upsample_argmax(logits, tf.shape)
        del logits, image
        mask = from_canonical(canon, tf).contiguous().cpu().numpy()
        if values != list(range(len(values))):
            indices = mask.copy()
            for index, value in enumerate(values):
                mask[indices == index] = value
        keep_largest_component(mask, [lab.value for lab in m.labels])
        if m.fill_holes_mm2:
            fill_small_holes(mask, [lab.value for lab in m.labels], volume.spacing, m.fill_holes_mm2,
                             volume.array, m.fill_holes_below)
        t3 = time.perf_counter()
        return mask, {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}


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
            "probabilities": {c.name: round(p, 4) for c, p in zip(self.classes, self.probabilities)},
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
    size = tuple(manifest.patch_size)
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

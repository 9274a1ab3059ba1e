"""Model runtimes, one class per manifest ``runtime`` (:data:`RUNTIMES`), and the loading of a
model package's weights: :func:`verify_weights` (SHA-256 against the manifest), then
:func:`load_predictor` (the package's runtime, on a device).

* ``monai``: :class:`~dicom_ai.infer.runtimes.monai.MonaiRuntime`, a MONAI network and a state
  dict;
* ``torchscript``: :class:`~dicom_ai.infer.runtimes.torchscript.TorchScriptRuntime`;
* ``onnx``: :class:`~dicom_ai.infer.runtimes.onnx.OnnxRuntime`, through onnxruntime.

Each takes and returns tensors (batch, channels, spatial...) on the model's device
(:class:`~dicom_ai.infer.runtimes.base.Runtime`). CPU threads are set once per process by
:func:`~dicom_ai.infer.runtimes.base.configure_threads`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dicom_ai.infer.runtimes.base import ModelPackageError, Runtime, configure_threads, cpu_threads
from dicom_ai.infer.runtimes.monai import MonaiRuntime
from dicom_ai.infer.runtimes.onnx import OnnxRuntime
from dicom_ai.infer.runtimes.torchscript import TorchScriptRuntime
from dicom_ai.package.manifest import ModelManifest, sha256_of

__all__ = ["RUNTIMES", "ModelPackageError", "Runtime", "configure_threads", "cpu_threads",
           "load_predictor", "runtime_for", "verify_weights"]

logger = logging.getLogger(__name__)

#: Manifest ``runtime`` name -> runtime class.
RUNTIMES: dict[str, type[Runtime]] = {cls.name: cls for cls in (MonaiRuntime, TorchScriptRuntime, OnnxRuntime)}


def runtime_for(manifest: ModelManifest) -> type[Runtime]:
    """The runtime class of a package's manifest.

    Raises
    ------
    ModelPackageError
        If no runtime of :data:`RUNTIMES` accepts the package.
    """
    cls = RUNTIMES.get(manifest.runtime)
    if cls is None or not cls.accepts(manifest):
        raise ModelPackageError(f"{manifest.label}: no runtime {manifest.runtime!r} here "
                                f"(known: {', '.join(sorted(RUNTIMES))})")
    return cls


def load_predictor(package_dir: Path, manifest: ModelManifest, device: torch.device) -> Runtime:
    """Load the weights of a package with its runtime, on ``device`` (the checksum is
    :func:`verify_weights`'s business).

    Raises
    ------
    ModelPackageError
        If the weights cannot be loaded by the runtime, or do not fit the network.
    """
    return runtime_for(manifest).load(Path(package_dir), manifest, device)


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

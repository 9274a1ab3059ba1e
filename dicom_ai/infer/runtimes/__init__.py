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

from dicom_ai.infer.runtimes.base import Runtime, configure_threads, cpu_threads
from dicom_ai.infer.runtimes.monai import MonaiRuntime
from dicom_ai.infer.runtimes.onnx import OnnxRuntime
from dicom_ai.infer.runtimes.torchscript import TorchScriptRuntime
from dicom_ai.package.manifest import ModelManifest, ModelPackageError, verify_weights

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


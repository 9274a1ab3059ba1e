"""Runtime ``onnx``: an ONNX graph run by onnxruntime, on CUDA when the device is CUDA and
onnxruntime has the CUDA execution provider, else on the CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dicom_ai.infer.runtimes.base import Runtime, cpu_threads
from dicom_ai.package.manifest import ModelManifest, ModelPackageError

logger = logging.getLogger(__name__)


class OnnxRuntime(Runtime):
    """An onnxruntime inference session. Inputs go to it as float32 NumPy arrays on the CPU and
    its output comes back to the input's device; a graph exported with a fixed batch size sets
    :attr:`max_batch`."""

    name = "onnx"

    def __init__(self, session, nbytes: int, max_batch: int | None, weights_device: str) -> None:
        super().__init__(nbytes, max_batch=max_batch, weights_device=weights_device)
        self.session = session
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def load(cls, package_dir: Path, manifest: ModelManifest, device: torch.device) -> OnnxRuntime:
        """Open an inference session on the weights file, with :func:`cpu_threads` intra-op
        threads.

        Raises
        ------
        ModelPackageError
            If onnxruntime cannot load the file.
        """
        import onnxruntime as ort

        weights = Path(package_dir) / manifest.weights
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads()
        options.log_severity_level = 3  # errors only: its warnings are about graph rewrites
        try:
            session = ort.InferenceSession(str(weights), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelPackageError(f"model package {package_dir}: {weights.name} is not a usable ONNX model: {exc}") from exc
        if device.type == "cuda" and providers[0] != "CUDAExecutionProvider":
            logger.warning("onnxruntime has no CUDA provider here; %s runs on the CPU", weights.name)
        batch = session.get_inputs()[0].shape[0]
        return cls(session, weights.stat().st_size, batch if isinstance(batch, int) and batch > 0 else None,
                   "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's first output for ``x`` (batch, channels, spatial...), on ``x``'s device."""
        out = self.session.run(None, {self.input_name: x.detach().to("cpu", torch.float32).numpy()})[0]
        return torch.from_numpy(out).to(x.device)

"""Runtime ``torchscript``: a ``torch.jit`` archive (e.g. a MONAI bundle's ``models/model.ts``)."""

from __future__ import annotations

from pathlib import Path

import torch

from dicom_ai.infer.runtimes.base import ModelPackageError, Runtime, module_bytes
from dicom_ai.package.manifest import ModelManifest


class TorchScriptRuntime(Runtime):
    """A TorchScript module, loaded straight onto the device."""

    name = "torchscript"
    module: torch.nn.Module  # always set (the base allows None for ONNX)

    def __init__(self, module: torch.nn.Module, nbytes: int, weights_device: str) -> None:
        super().__init__(nbytes, module, weights_device=weights_device)

    @classmethod
    def load(cls, package_dir: Path, manifest: ModelManifest, device: torch.device) -> TorchScriptRuntime:
        """Load the archive with ``torch.jit.load`` on ``device``, in eval mode.

        Raises
        ------
        ModelPackageError
            If the weights file is not a TorchScript archive.
        """
        weights = Path(package_dir) / manifest.weights
        try:
            module = torch.jit.load(str(weights), map_location=device)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / ValueError variants
            raise ModelPackageError(f"model package {package_dir}: {manifest.weights} is not TorchScript: {exc}") from exc
        module.eval()
        return cls(module, module_bytes(module), device.type)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output for ``x`` (batch, channels, spatial...)."""
        return self.module(x)

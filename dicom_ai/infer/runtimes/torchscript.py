"""Runtime ``torchscript``: a ``torch.jit`` archive (e.g. a MONAI bundle's ``models/model.ts``)."""

from __future__ import annotations

from pathlib import Path

import torch

from dicom_ai.infer.runtimes.base import TorchRuntime, module_bytes
from dicom_ai.package.manifest import ModelManifest, ModelPackageError


class TorchScriptRuntime(TorchRuntime):
    """A TorchScript module, loaded straight onto the device."""

    name = "torchscript"

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

    def use_autocast(self, dtype: torch.dtype) -> bool:
        """Never: a TorchScript graph runs in the dtypes it was scripted or traced with."""
        return False

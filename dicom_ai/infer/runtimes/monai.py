"""Runtime ``monai``: a ``monai.networks.nets`` network named in the manifest, plus a PyTorch
state dict (the weights file)."""

from __future__ import annotations

from pathlib import Path

import torch

from dicom_ai.infer.runtimes.base import TorchRuntime, module_bytes
from dicom_ai.package.manifest import ModelManifest, ModelPackageError
from dicom_ai.package.network import SliceWise, build_network, is_slicewise


class MonaiRuntime(TorchRuntime):
    """A MONAI network built from ``manifest.network`` with the package's state dict loaded
    (float32). A 2D network (``spatial_dims`` 2) is wrapped in
    :class:`~dicom_ai.package.network.SliceWise`, so it takes (batch, channels, 1, rows, columns)
    like a 3D one."""

    name = "monai"

    @classmethod
    def load(cls, package_dir: Path, manifest: ModelManifest, device: torch.device) -> MonaiRuntime:
        """Build the network, load the state dict (a bare one or ``{"state_dict": ...}``) and
        move it to ``device``.

        Raises
        ------
        ModelPackageError
            If the network cannot be built, the weights file is not a state dict, or the
            weights do not fit the network.
        """
        weights = Path(package_dir) / manifest.weights
        assert manifest.network is not None  # ModelManifest: runtime monai needs one
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
        module = SliceWise(network) if is_slicewise(manifest.network) else network
        return cls(module, module_bytes(network), device.type)

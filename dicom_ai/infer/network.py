"""Build the network named in a model manifest (MONAI), and the default lung U-Net definition.

The U-Net follows Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
Segmentation" (MICCAI 2015) and Cicek et al., "3D U-Net" (MICCAI 2016), as implemented by
``monai.networks.nets.UNet`` (residual units, Kerfoot et al. 2018).
"""

from __future__ import annotations

import torch

from dicom_ai.models.manifest import NetworkSpec

#: Network of the shipped lung model: 3D U-Net, 1 input channel (windowed CT), 3 outputs
#: (background, left lung, right lung), about 0.6 M parameters (2.4 MB in float32).
LUNG_UNET_PARAMS: dict = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "norm": "instance",
}


def build_network(spec: NetworkSpec) -> torch.nn.Module:
    """Instantiate the MONAI network ``spec.arch`` with ``spec.params``.

    Parameters
    ----------
    spec:
        From the manifest; ``arch`` is a dotted MONAI class name.

    Returns
    -------
    torch.nn.Module
        Freshly initialised network (weights not loaded).

    Raises
    ------
    ValueError
        If ``arch`` is not a supported MONAI network.
    """
    if spec.arch == "monai.networks.nets.UNet":
        from monai.networks.nets import UNet

        params = dict(spec.params)
        for key in ("channels", "strides"):
            if key in params:
                params[key] = tuple(params[key])
        return UNet(**params)
    raise ValueError(f"unsupported network architecture {spec.arch!r}")

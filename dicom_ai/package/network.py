"""Build the network named in a model manifest (MONAI), and the default lung U-Net definition.

The U-Net follows Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
Segmentation" (MICCAI 2015) and Cicek et al., "3D U-Net" (MICCAI 2016), as implemented by
``monai.networks.nets.UNet`` (residual units, Kerfoot et al. 2018).
"""

from __future__ import annotations

import torch

from dicom_ai.package.manifest import NetworkSpec

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


class SliceWise(torch.nn.Module):
    """A 2D network applied to each slice of a (batch, channels, 1, rows, columns) input.

    Slice-wise models (manifest ``patch_size`` ``[1, rows, columns]``, a network of
    ``spatial_dims`` 2) run through the same 3D sliding window as volumetric ones: each window is
    one slice, whose depth axis this wrapper removes before the 2D network and restores after.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        y = self.net(x.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w))
        return y.reshape(b, d, y.shape[1], h, w).permute(0, 2, 1, 3, 4)


def is_slicewise(spec: NetworkSpec | None) -> bool:
    """Whether a manifest network is 2D (``spatial_dims`` 2), run slice by slice."""
    return spec is not None and int(spec.params.get("spatial_dims", 3)) == 2


def monai_network_class(arch: str) -> type[torch.nn.Module]:
    """The class ``arch`` names in ``monai.networks.nets`` (``"monai.networks.nets.UNet"`` or
    ``"UNet"``).

    Raises
    ------
    ValueError
        If ``monai.networks.nets`` has no network class of that name.
    """
    import monai.networks.nets as nets

    name = arch.rsplit(".", 1)[-1]
    cls = getattr(nets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ValueError(f"unsupported network architecture {arch!r}: not a class of monai.networks.nets")
    return cls


def build_network(spec: NetworkSpec) -> torch.nn.Module:
    """Instantiate the MONAI network ``spec.arch`` with ``spec.params`` (lists become tuples).

    Parameters
    ----------
    spec:
        From the manifest; ``arch`` is a dotted ``monai.networks.nets`` class name.

    Returns
    -------
    torch.nn.Module
        Freshly initialised network (weights not loaded).

    Raises
    ------
    ValueError
        If ``arch`` is not a MONAI network.
    TypeError
        If ``params`` do not fit its constructor.
    """
    cls = monai_network_class(spec.arch)
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.params.items()}
    return cls(**params)

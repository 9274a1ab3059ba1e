"""Model package manifest: what a model expects and what it produces.

A model package is a folder holding ``manifest.json``, the weights file it names and a
``MODEL_CARD.md``. The manifest is the contract between the registry, the inference runtime
(:mod:`dicom_ai.infer`) and the report writers (:mod:`dicom_ai.report`): input grid and intensity
window, network definition, and the coded output labels written into DICOM SEG segments
(PS3.3 C.8.20.4) and TID 1500 measurement groups (PS3.16 TID 1500).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class Code(BaseModel):
    """A coded concept (PS3.3 Table 8.8-1): code value, coding scheme designator, code meaning."""

    value: str
    scheme: str
    meaning: str


class Label(BaseModel):
    """One output label of a segmentation model; becomes one SEG segment.

    ``value`` is the integer in the label mask; ``category`` and ``type`` are the Segmented
    Property Category and Type codes (SNOMED CT, ``SCT``); ``color`` is RGB 0-255.
    """

    value: int = Field(ge=1, le=255)
    name: str
    category: Code
    type: Code
    color: tuple[int, int, int] = (255, 0, 0)


class NetworkSpec(BaseModel):
    """The network to build before loading weights: ``arch`` names a MONAI class, ``params`` its kwargs."""

    arch: Literal["monai.networks.nets.UNet"] = "monai.networks.nets.UNet"
    params: dict = Field(default_factory=dict)


class ModelManifest(BaseModel):
    """The manifest of a model package (``manifest.json``).

    Attributes
    ----------
    spacing:
        Voxel spacing of the model's input grid in mm, in axis order (slices, rows, columns).
    window:
        Intensity window ``(low, high)`` in HU: values are clipped to it, then scaled to [0, 1].
    patch_size:
        Sliding-window patch in voxels, (slices, rows, columns).
    """

    name: str
    version: str
    task: Literal["segmentation", "classification"] = "segmentation"
    description: str = ""
    modality: str = "CT"
    body_region: str = "CHEST"
    spacing: tuple[float, float, float]
    window: tuple[float, float]
    patch_size: tuple[int, int, int]
    network: NetworkSpec
    weights: str = "model.pt"
    sha256: str = ""
    labels: list[Label]
    license: str = ""
    model_card: str = "MODEL_CARD.md"
    min_slices: int = 10

    @property
    def algorithm_name(self) -> str:
        """Name used as Segment Algorithm Name and in SR observer context."""
        return self.name


def load_manifest(package_dir: Path) -> ModelManifest:
    """Read ``package_dir/manifest.json``.

    Raises
    ------
    FileNotFoundError
        If the folder has no manifest.
    pydantic.ValidationError
        If the manifest does not match :class:`ModelManifest`.
    """
    text = (Path(package_dir) / "manifest.json").read_text(encoding="utf-8")
    return ModelManifest.model_validate(json.loads(text))


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

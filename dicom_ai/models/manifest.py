"""Model package manifest: what a model expects and what it produces.

A model package is a folder (or a zip of one) holding ``manifest.json``, the weights file it
names and a ``MODEL_CARD.md``. The manifest is the contract between the registry
(:mod:`dicom_ai.models.registry`), the inference runtime (:mod:`dicom_ai.infer`) and the report
writers (:mod:`dicom_ai.report`): task, input grid and intensity normalisation, runtime and
weights checksum, and the coded outputs:

* segmentation: ``labels``, written as DICOM SEG segments (PS3.3 C.8.20.4) and TID 1500
  volumetric measurement groups (PS3.16 TID 1500, TID 1411);
* classification: ``classes``, written as a TID 1500 qualitative evaluation (PS3.16 TID 1501)
  of the concept ``finding`` with the class and its probability.

Runtimes: ``"monai"`` (a MONAI network named in ``network`` plus a PyTorch state dict),
``"torchscript"`` (``torch.jit`` archive, e.g. a MONAI bundle's ``models/model.ts``) and
``"onnx"`` (run by onnxruntime). Every runtime takes and returns tensors
(batch, channel, spatial...) in the canonical axis order of :mod:`dicom_ai.infer.preprocess`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator


#: Orientation code letter -> axis of the canonical grid (0 slices S/I, 1 rows P/A, 2 columns L/R).
CANONICAL_AXIS_OF = {"S": 0, "I": 0, "P": 1, "A": 1, "L": 2, "R": 2}


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


class ClassLabel(BaseModel):
    """One output class of a classification model (channel ``index`` of its output).

    ``code`` is the coded value written into the SR's qualitative evaluation (SNOMED CT where
    one exists); ``attention`` flags the study for attention in the worklist when this class
    is the result.
    """

    index: int = Field(ge=0)
    name: str
    code: Code
    attention: bool = False


class NetworkSpec(BaseModel):
    """The network to build before loading weights (runtime ``"monai"``): ``arch`` names a class
    of ``monai.networks.nets`` (e.g. ``monai.networks.nets.UNet``), ``params`` its kwargs."""

    arch: str = "monai.networks.nets.UNet"
    params: dict = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _monai_net(cls, v: str) -> str:
        if not v.startswith("monai.networks.nets.") or not v.rsplit(".", 1)[1].isidentifier():
            raise ValueError(f"network arch {v!r}: expected a class of monai.networks.nets")
        return v


class ModelManifest(BaseModel):
    """The manifest of a model package (``manifest.json``).

    Attributes
    ----------
    name, version:
        Identify the model; a registry holds several versions of one name, one active.
    task:
        ``"segmentation"`` (a label mask, ``labels``) or ``"classification"`` (``classes``).
    axcodes:
        Orientation codes of the network's input axes (MONAI ``Orientationd`` convention):
        ``"SPL"`` (default) is the node's canonical (slices, rows, columns) grid, slices from
        inferior to superior, rows from anterior to posterior, columns from right to left;
        ``"RAS"`` is what MONAI bundles use. ``spacing`` and ``patch_size`` are in this order.
    spacing:
        Voxel spacing of the model's input grid in mm, in ``axcodes`` axis order (by default
        slices, rows, columns).
    normalization:
        ``"window"``: clip to ``window`` ``(low, high)`` (HU for CT), scale to [0, 1];
        ``"zscore"``: subtract the volume's mean, divide by its standard deviation.
    patch_size:
        Segmentation: sliding-window patch in voxels, (slices, rows, columns).
        Classification: the input size the volume (``input = "volume"``) or each slice
        (``input = "slices"``, first element 1) is resized to.
    input:
        Classification only: ``"volume"`` (one 3D input) or ``"slices"`` (each axial slice is
        classified, the class probabilities averaged over slices).
    runtime, network, weights, sha256:
        How to load the model (see the module docstring); ``sha256`` of the weights file is
        checked at every load and by ``dicom-ai models add``.
    finding:
        Classification: the concept the class answers (TID 1501 qualitative evaluation name).
    attention_below:
        Classification: flag the study for attention when the top class's probability is
        below this (an uncertain result), besides classes marked ``attention``.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    task: Literal["segmentation", "classification"] = "segmentation"
    description: str = ""
    modality: str = "CT"
    body_region: str = "CHEST"
    spacing: tuple[float, float, float]
    normalization: Literal["window", "zscore"] = "window"
    window: tuple[float, float] | None = None
    patch_size: tuple[int, int, int]
    input: Literal["volume", "slices"] = "volume"
    axcodes: str = Field("SPL", pattern=r"^[SIPALRspalr]{3}$")
    runtime: Literal["monai", "torchscript", "onnx"] = "monai"
    network: NetworkSpec | None = None
    weights: str = "model.pt"
    sha256: str = ""
    labels: list[Label] = []
    classes: list[ClassLabel] = []
    finding: Code | None = None
    attention_below: float | None = Field(None, ge=0, le=1)
    license: str = ""
    model_card: str = "MODEL_CARD.md"
    min_slices: int = 10

    @model_validator(mode="after")
    def _consistent(self) -> "ModelManifest":
        if self.runtime == "monai" and self.network is None:
            raise ValueError("runtime 'monai' needs a network (arch and params)")
        if self.normalization == "window":
            if self.window is None:
                raise ValueError("normalization 'window' needs window [low, high]")
            if not self.window[1] > self.window[0]:
                raise ValueError(f"window {list(self.window)}: high must be above low")
        if self.task == "segmentation":
            if not self.labels:
                raise ValueError("a segmentation model needs labels")
            if len({lb.value for lb in self.labels}) != len(self.labels):
                raise ValueError("two labels have the same value")
        else:
            if len(self.classes) < 2:
                raise ValueError("a classification model needs at least two classes")
            if sorted(c.index for c in self.classes) != list(range(len(self.classes))):
                raise ValueError("class indices must be 0 .. number of classes - 1")
            if self.finding is None:
                raise ValueError("a classification model needs finding (the concept its classes answer)")
            if self.input == "slices" and self.patch_size[0] != 1:
                raise ValueError("input 'slices' needs patch_size [1, rows, columns]")
        if sorted(CANONICAL_AXIS_OF[c] for c in self.axcodes.upper()) != [0, 1, 2]:
            raise ValueError(f"axcodes {self.axcodes!r}: needs one of S/I, P/A and L/R each")
        if any(v <= 0 for v in self.spacing) or any(v <= 0 for v in self.patch_size):
            raise ValueError("spacing and patch_size must be positive")
        return self

    @property
    def label(self) -> str:
        """``"<name> <version>"``."""
        return f"{self.name} {self.version}"

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


def write_manifest(package_dir: Path, manifest: ModelManifest) -> Path:
    """Write ``package_dir/manifest.json`` (indented, unset optional fields left out)."""
    path = Path(package_dir) / "manifest.json"
    path.write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")
    return path


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

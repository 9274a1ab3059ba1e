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

A segmentation manifest may also say what a plausible result is, checked after every job by
:func:`dicom_ai.report.plausibility.check_plausibility` (a result outside puts the study on
attention in the worklist and is said in the SR):

* ``Label.plausible_volume_ml``: ``[min, max]`` volume of the label in mL;
* ``ModelManifest.plausible_volume_ratios``: ``[{"numerator": 1, "denominator": 2,
  "range": [lo, hi]}, ...]``, the plausible ratio of two labels' volumes (label values);
* a result with every label empty is implausible unless ``plausible_empty`` is true.

Runtimes: ``"monai"`` (a MONAI network named in ``network`` plus a PyTorch state dict),
``"torchscript"`` (``torch.jit`` archive, e.g. a MONAI bundle's ``models/model.ts``) and
``"onnx"`` (run by onnxruntime). Every runtime takes and returns tensors
(batch, channel, spatial...) in the canonical axis order of :mod:`dicom_ai.infer.preprocess`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

#: Orientation code letter -> axis of the canonical grid (0 slices S/I, 1 rows P/A, 2 columns L/R).
CANONICAL_AXIS_OF = {"S": 0, "I": 0, "P": 1, "A": 1, "L": 2, "R": 2}

logger = logging.getLogger(__name__)


class Code(BaseModel):
    """A coded concept (PS3.3 Table 8.8-1): code value, coding scheme designator, code meaning."""

    value: str
    scheme: str
    meaning: str


def _check_range(what: str, bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{what} {list(bounds)}: bounds must be finite numbers")
    if low < 0:
        raise ValueError(f"{what} {list(bounds)}: the lower bound must not be negative")
    if not low < high:
        raise ValueError(f"{what} {list(bounds)}: the lower bound must be below the upper bound")
    return bounds


class Label(BaseModel):
    """One output label of a segmentation model; becomes one SEG segment.

    ``value`` is the integer in the label mask; ``category`` and ``type`` are the Segmented
    Property Category and Type codes (SNOMED CT, ``SCT``); ``color`` is RGB 0-255.
    ``plausible_volume_ml``, when given, is the ``(min, max)`` volume in mL (bounds included,
    ``0 <= min < max``) outside which the label's volume is implausible (an empty label is
    0 mL); see :mod:`dicom_ai.report.plausibility`.
    """

    value: int = Field(ge=1, le=255)
    name: str
    category: Code
    type: Code
    color: tuple[int, int, int] = (255, 0, 0)
    plausible_volume_ml: tuple[float, float] | None = None

    @field_validator("plausible_volume_ml")
    @classmethod
    def _volume_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return None if v is None else _check_range("plausible_volume_ml", v)


class PlausibleRatio(BaseModel):
    """The plausible range of the ratio of two labels' volumes, ``numerator / denominator``
    (label values of the manifest), bounds included, ``0 <= range[0] < range[1]``; e.g. left
    lung / right lung."""

    numerator: int = Field(ge=1, le=255)
    denominator: int = Field(ge=1, le=255)
    range: tuple[float, float]

    @field_validator("range")
    @classmethod
    def _ratio_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _check_range("plausible ratio range", v)

    @model_validator(mode="after")
    def _two_labels(self) -> "PlausibleRatio":
        if self.numerator == self.denominator:
            raise ValueError(f"plausible ratio of label {self.numerator} to itself")
        return self


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
        Segmentation: sliding-window patch in voxels, (slices, rows, columns); ``[1, rows,
        columns]`` with a 2D network (``spatial_dims`` 2): the model runs slice by slice.
        Classification: the input size the volume (``input = "volume"``) or each slice
        (``input = "slices"``, first element 1) is resized to.
    input:
        Classification only: ``"volume"`` (one 3D input) or ``"slices"`` (each axial slice is
        classified, the class probabilities averaged over slices).
    runtime, network, weights, sha256:
        How to load the model (see the module docstring); ``sha256`` of the weights file is
        checked at every load and by ``dicom-ai models add``.
    autocast:
        ``"bfloat16"``: the package's author has validated the network's forward pass under
        ``torch.autocast`` in bfloat16 (runtime ``monai`` only), so a node with ``[worker]
        reduced_precision`` runs it so where the device computes bfloat16 natively
        (:func:`dicom_ai.infer.runtimes.base.native_autocast`), float32 elsewhere; the model card
        should show the agreement with float32. None (default): float32 always.
    finding:
        Classification: the concept the class answers (TID 1501 qualitative evaluation name).
    attention_below:
        Classification: flag the study for attention when the top class's probability is
        below this (an uncertain result), besides classes marked ``attention``.
    fill_holes_mm2:
        Segmentation post-processing: after the largest component of each label is kept,
        in-slice holes of at most this area (mm^2) and holes enclosed in 3D are filled
        (:func:`dicom_ai.infer.postprocess.fill_small_holes`); None: no filling.
    fill_holes_below:
        With ``fill_holes_mm2``: in-slice holes of any size whose mean source value (HU for
        CT) is below this are filled too (for the lung: aerated lung enclosed by lung).
    plausible_volume_ratios:
        Segmentation: plausible ranges of ratios of two labels' volumes
        (:class:`PlausibleRatio`; both labels must be labels of the manifest).
    plausible_empty:
        Segmentation: a result with every label empty is plausible (e.g. a lesion model that
        may find nothing); by default it is not ("no <labels> found" puts the study on
        attention).
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
    autocast: Literal["bfloat16"] | None = None
    labels: list[Label] = []
    classes: list[ClassLabel] = []
    finding: Code | None = None
    attention_below: float | None = Field(None, ge=0, le=1)
    plausible_volume_ratios: list[PlausibleRatio] = []
    plausible_empty: bool = False
    license: str = ""
    model_card: str = "MODEL_CARD.md"
    min_slices: int = 10
    fill_holes_mm2: float | None = Field(None, gt=0)
    fill_holes_below: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ModelManifest":
        if self.runtime == "monai" and self.network is None:
            raise ValueError("runtime 'monai' needs a network (arch and params)")
        if self.autocast is not None and self.runtime != "monai":
            raise ValueError(f"autocast {self.autocast!r} needs runtime 'monai' (a torch module built here)")
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
            values = {lb.value for lb in self.labels}
            for ratio in self.plausible_volume_ratios:
                unknown = sorted({ratio.numerator, ratio.denominator} - values)
                if unknown:
                    raise ValueError(f"plausible ratio {ratio.numerator}/{ratio.denominator}: "
                                     f"{unknown} are not label values")
        else:
            if len(self.classes) < 2:
                raise ValueError("a classification model needs at least two classes")
            if sorted(c.index for c in self.classes) != list(range(len(self.classes))):
                raise ValueError("class indices must be 0 .. number of classes - 1")
            if self.finding is None:
                raise ValueError("a classification model needs finding (the concept its classes answer)")
            if self.input == "slices" and self.patch_size[0] != 1:
                raise ValueError("input 'slices' needs patch_size [1, rows, columns]")
            if self.plausible_volume_ratios:
                raise ValueError("plausible_volume_ratios apply to segmentation models only")
        if sorted(CANONICAL_AXIS_OF[c] for c in self.axcodes.upper()) != [0, 1, 2]:
            raise ValueError(f"axcodes {self.axcodes!r}: needs one of S/I, P/A and L/R each")
        if any(v <= 0 for v in self.spacing) or any(v <= 0 for v in self.patch_size):
            raise ValueError("spacing and patch_size must be positive")
        if self.network is not None and int(self.network.params.get("spatial_dims", 3)) == 2 \
                and self.task == "segmentation" and (self.patch_size[0] != 1 or self.axcodes.upper() != "SPL"):
            raise ValueError("a 2D segmentation network runs slice by slice: patch_size [1, rows, columns], axcodes SPL")
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


class ModelPackageError(RuntimeError):
    """The model package is unusable (missing or corrupted weights, wrong network)."""


def verify_weights(package_dir: Path, manifest: ModelManifest) -> None:
    """Check the weights file exists and has the manifest's SHA-256 (no runtime is loaded).

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

"""Steps of the MONAI bundle import that map what the network takes: network data format,
identity, preprocessing, inferer and postprocessing.

Each step reads one part of the bundle (``configs/metadata.json``, the inference config read
by :mod:`dicom_ai.models.bundle_config`) and returns a small dataclass of manifest values with
its :class:`~dicom_ai.models.bundle_config.Notes`; :func:`dicom_ai.models.bundle.import_bundle`
composes them. Spatial values (``pixdim``, ``roi_size``, ``spatial_shape``) are taken in the
bundle's axis order, the order of its ``Orientationd`` ``axcodes`` (RAS when there is none):
the manifest's ``axcodes`` say so, and the node permutes its canonical (slices, rows, columns)
grid to that order (:func:`dicom_ai.infer.preprocess.network_axes`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_ai.models.bundle_config import (
    SPEC_URL,
    Expr,
    InferenceConfig,
    Notes,
    applies,
    array_name,
    flatten,
    number,
    transform_name,
    triple,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

#: Preprocessing transforms the node does itself (reading, channel, type, device).
NODE_PRE = {
    "LoadImage": "the node reads the DICOM series itself",
    "EnsureChannelFirst": "the node adds the channel axis",
    "AddChannel": "the node adds the channel axis",
    "EnsureType": "the node passes float32 tensors",
    "ToTensor": "the node passes float32 tensors",
    "CastToType": "the node passes float32 tensors",
    "ToDevice": "the node picks the device",
    "ToMetaTensor": "not needed",
    "FromMetaTensor": "not needed",
    "Identity": "nothing to do",
}
#: Postprocessing transforms equivalent to what the node does after inference.
NODE_POST = {
    "Activations": "class scores (the node takes the argmax of the logits; softmax keeps the order)",
    "AsDiscrete": "the node takes the argmax over channels",
    "Invert": "the node maps the mask back to the source grid (reorientation and resampling undone)",
    "SaveImage": "the node writes a DICOM SEG",
    "KeepLargestConnectedComponent": "the node keeps the largest 3D connected component of each label",
    "EnsureType": "not needed",
    "ToTensor": "not needed",
    "ToDevice": "not needed",
    "CopyItems": "not needed",
    "DeleteItems": "not needed",
    "Identity": "nothing to do",
}


def slugify(text: str) -> str:
    """``"Spleen CT segmentation"`` -> ``"spleen-ct-segmentation"`` (the manifest's name pattern,
    at most 64 characters); empty when nothing is left."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower())
    slug = re.sub(r"-{2,}", "-", slug).lstrip("._-")[:64].rstrip("-")
    return slug


# --- network data format ---------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkFormat:
    """The ``network_data_format`` of ``metadata.json``: the network's image input and its
    segmentation output.

    Attributes
    ----------
    image_key, out_key:
        ``inputs`` / ``outputs`` keys (``"image"`` and ``"pred"`` when present, else the first).
    image, pred:
        Their objects (``modality``, ``num_channels``, ``spatial_shape`` in voxels, bundle axis
        order; ``channel_def``: channel index -> name).
    """

    image_key: str
    out_key: str
    image: dict
    pred: dict

    @property
    def spatial_shape(self) -> Any:
        """``inputs.<image>.spatial_shape`` as given (a list of three voxel counts, or anything)."""
        return self.image.get("spatial_shape")


def network_data_format(bundle_dir: Path, meta: dict) -> tuple[NetworkFormat, Notes]:
    """The network's input and output (MONAI bundle specification, ``network_data_format``).

    Raises
    ------
    ValueError
        If there are no inputs or outputs, they are not objects, the output's ``format`` is not
        ``"segmentation"``, the input has more than one channel or is not 3D.
    """
    ndf = meta.get("network_data_format")
    if not isinstance(ndf, dict) or not isinstance(ndf.get("inputs"), dict) or not ndf["inputs"] \
            or not isinstance(ndf.get("outputs"), dict) or not ndf["outputs"]:
        raise ValueError(f"{bundle_dir}: metadata.json has no network_data_format with inputs and outputs; "
                         f"the input and output of the network are unknown ({SPEC_URL})")
    inputs, outputs = ndf["inputs"], ndf["outputs"]
    image_key = "image" if "image" in inputs else next(iter(inputs))
    out_key = "pred" if "pred" in outputs else next(iter(outputs))
    image, pred = inputs[image_key], outputs[out_key]
    if not isinstance(image, dict) or not isinstance(pred, dict):
        raise ValueError(f"{bundle_dir}: network_data_format inputs.{image_key} and outputs.{out_key} must be "
                         "objects")
    if str(pred.get("format", "")).lower() != "segmentation":
        raise ValueError(f"{bundle_dir}: output {out_key!r} has format {pred.get('format')!r}; only bundles "
                         "whose output format is 'segmentation' can be imported")
    if int(image.get("num_channels", 1)) != 1:
        raise ValueError(f"{bundle_dir}: input {image_key!r} has {image.get('num_channels')} channels; the node "
                         "feeds one image channel")
    shape = image.get("spatial_shape")
    if isinstance(shape, list) and len(shape) != 3:
        raise ValueError(f"{bundle_dir}: input spatial_shape {shape} is not 3D; only 3D networks can be imported")
    return NetworkFormat(image_key, out_key, image, pred), Notes()


# --- identity --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Manifest ``name``, ``version``, ``description`` and ``modality`` (DICOM Modality, ``CT``,
    ``MR``, ...)."""

    name: str
    version: str
    description: str
    modality: str


def identity(bundle_dir: Path, meta: dict, fmt: NetworkFormat, name: str | None) -> tuple[Identity, Notes]:
    """Name (``name``, else metadata ``name`` slugified, else the folder name), version (none:
    ``0.0.0``), description (else ``task``) and modality (``MRI`` -> ``MR``; none: ``CT``).

    Raises
    ------
    ValueError
        If the name or the version does not fit the manifest's patterns.
    """
    notes = Notes()
    if name is None:
        name = slugify(str(meta.get("name", ""))) or slugify(bundle_dir.resolve().name)
        source = "metadata name" if slugify(str(meta.get("name", ""))) else "bundle folder name"
        notes.mapped.append(f"{source} {meta.get('name', bundle_dir.name)!r} -> name {name!r}")
    if not _NAME_RE.match(name or "") or len(name) > 64:
        raise ValueError(f"name {name!r} does not fit the manifest pattern {_NAME_RE.pattern} (pass name=...)")
    version = str(meta.get("version", "")).strip()
    if not version:
        version = "0.0.0"
        notes.unmapped.append("metadata has no version: version 0.0.0 assumed")
    elif not _VERSION_RE.match(version) or len(version) > 64:
        raise ValueError(f"metadata version {version!r} does not fit the manifest pattern {_VERSION_RE.pattern}")
    else:
        notes.mapped.append(f"metadata version {version} -> version")
    description = str(meta.get("description", "") or meta.get("task", ""))
    if description:
        notes.mapped.append("metadata description -> description")
    modality = str(fmt.image.get("modality", "")).strip().upper()
    if modality in ("MRI", "MR"):
        modality = "MR"
    if modality:
        notes.mapped.append(f"inputs.{fmt.image_key}.modality {fmt.image.get('modality')} -> modality {modality}")
    else:
        modality = "CT"
        notes.unmapped.append(f"inputs.{fmt.image_key} has no modality: CT assumed")
    return Identity(name, version, description, modality), notes


# --- preprocessing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """The network's input grid and intensity scaling.

    Attributes
    ----------
    axcodes:
        Orientation of the network's axes (``Orientationd`` ``axcodes``, e.g. ``"RAS"``).
    spacing:
        Voxel spacing in mm, in ``axcodes`` order (``Spacingd`` ``pixdim``).
    normalization:
        ``"window"`` (``ScaleIntensityRanged``) or ``"zscore"``.
    window:
        (a_min, a_max) of the window in the image's units (HU for CT), or None.
    """

    axcodes: str
    spacing: tuple[float, float, float]
    normalization: str
    window: tuple[float, float] | None


@dataclass
class _Pre:
    """What the preprocessing transforms said so far."""

    axcodes: str | None = None
    spacing: tuple[float, float, float] | None = None
    normalization: str | None = None
    window: tuple[float, float] | None = None
    spacing_before_orientation: bool = False


def _orientation(t: dict, tname: str, pre: _Pre, notes: Notes) -> None:
    codes = t.get("axcodes")
    if not isinstance(codes, str) or not re.fullmatch(r"[SIPALRspalr]{3}", codes):
        notes.unmapped.append(f"preprocessing {tname} axcodes {codes!r} not usable: RAS assumed")
        return
    pre.axcodes = codes.upper()
    notes.mapped.append(f"{tname} axcodes {codes} -> axcodes")


def _spacing(t: dict, tname: str, pre: _Pre, notes: Notes) -> None:
    pixdim: Any = t.get("pixdim")  # a config value: triple() checks it
    if isinstance(pixdim, Expr):
        raise ValueError(f"preprocessing {tname} pixdim is an expression ({pixdim}), not evaluated; "
                         "the node needs the input spacing")
    pre.spacing = triple(pixdim, f"{tname} pixdim")
    if any(v <= 0 for v in pre.spacing):
        raise ValueError(f"{tname} pixdim {list(pixdim)}: a value <= 0 keeps the source spacing; the node "
                         "resamples to a fixed spacing")
    pre.spacing_before_orientation = pre.axcodes is None
    notes.mapped.append(f"{tname} pixdim {list(pre.spacing)} -> spacing (mm)")
    mode = t.get("mode", "bilinear")
    mode = mode[0] if isinstance(mode, list) and mode else mode
    if str(mode).lower() not in ("bilinear", "trilinear", "1"):
        notes.unmapped.append(f"{tname} mode {t.get('mode')!r}: the node resamples trilinearly")


def _scale_intensity_range(t: dict, tname: str, pre: _Pre, notes: Notes) -> None:
    if pre.normalization is not None:
        notes.unmapped.append(f"preprocessing {tname}: a second intensity transform, not applied")
        return
    a_min, a_max = number(t.get("a_min"), f"{tname} a_min"), number(t.get("a_max"), f"{tname} a_max")
    b_min = number(t.get("b_min", 0.0) if t.get("b_min") is not None else 0.0, f"{tname} b_min")
    b_max = number(t.get("b_max", 1.0) if t.get("b_max") is not None else 1.0, f"{tname} b_max")
    pre.normalization, pre.window = "window", (a_min, a_max)
    notes.mapped.append(f"{tname} a_min {a_min:g} a_max {a_max:g} -> normalization window, window [{a_min:g}, {a_max:g}]")
    if (b_min, b_max) != (0.0, 1.0):
        notes.unmapped.append(f"{tname} b_min {b_min:g} b_max {b_max:g}: the node scales the window to [0, 1]")
    if not t.get("clip", False):
        notes.unmapped.append(f"{tname} clip false: the node clips to the window")


def _normalize_intensity(t: dict, tname: str, pre: _Pre, notes: Notes) -> None:
    if pre.normalization is not None:
        notes.unmapped.append(f"preprocessing {tname}: a second intensity transform, not applied")
        return
    pre.normalization = "zscore"
    notes.mapped.append(f"{tname} -> normalization zscore")
    for opt in ("nonzero", "channel_wise"):
        if t.get(opt):
            notes.unmapped.append(f"{tname} {opt} true: the node's zscore uses all voxels")
    for opt in ("subtrahend", "divisor"):
        if t.get(opt) is not None:
            notes.unmapped.append(f"{tname} {opt} {t.get(opt)}: the node uses the volume's mean and SD")


#: Array name of a preprocessing transform the node maps -> how it reads that transform.
_PRE_MAPPERS: dict[str, Callable[[dict, str, _Pre, Notes], None]] = {
    "Orientation": _orientation,
    "Spacing": _spacing,
    "ScaleIntensityRange": _scale_intensity_range,
    "NormalizeIntensity": _normalize_intensity,
}


def preprocessing(bundle_dir: Path, config: InferenceConfig, image_key: str) -> tuple[Preprocessing, Notes]:
    """The ``preprocessing`` transforms (else ``dataset#transform``) applied to ``image_key``:
    ``Orientationd`` (none: RAS), ``Spacingd``, ``ScaleIntensityRanged`` or
    ``NormalizeIntensityd`` (none: zscore); the node's own steps are noted, the rest listed as
    not applied.

    Raises
    ------
    ValueError
        If there is no ``Spacingd`` ``pixdim``, or it or an intensity bound is an expression,
        not three numbers, or a value <= 0.
    """
    pre_id = next((i for i in ("preprocessing", "dataset#transform") if config.has(i)), None)
    transforms, notes = flatten(config.value(pre_id), "preprocessing") if pre_id else ([], Notes())
    if config.path is not None and pre_id is None:
        notes.unmapped.append(f"{config.path.name} has no preprocessing section")
    pre = _Pre()
    for t in transforms:
        tname = transform_name(t.get("_target_", ""))
        base = array_name(tname, set(NODE_PRE) | set(_PRE_MAPPERS))
        if not applies(t, image_key):
            notes.mapped.append(f"preprocessing {tname} (keys {t.get('keys')}): not applied to {image_key!r}, ignored")
        elif base in NODE_PRE:
            notes.mapped.append(f"preprocessing {tname}: {NODE_PRE[base]}")
        elif base in _PRE_MAPPERS:
            _PRE_MAPPERS[base](t, tname, pre, notes)
        else:
            notes.unmapped.append(f"preprocessing {tname}: not applied (no equivalent in the node)")
    if pre.axcodes is None:
        pre.axcodes = "RAS"
        notes.unmapped.append("no Orientationd in preprocessing: axcodes RAS assumed (MONAI's usual orientation)")
    elif pre.spacing_before_orientation and pre.spacing is not None:
        notes.unmapped.append("Spacingd comes before Orientationd: pixdim taken in axcodes order")
    if pre.spacing is None:
        raise ValueError(f"{bundle_dir}: no Spacingd pixdim in the preprocessing; the node needs the network's "
                         "input spacing")
    if pre.normalization is None:
        pre.normalization = "zscore"
        notes.unmapped.append("no ScaleIntensityRanged or NormalizeIntensityd in the preprocessing: zscore "
                              "normalisation assumed; check the bundle's intensity scaling")
    return Preprocessing(pre.axcodes, pre.spacing, pre.normalization, pre.window), notes


# --- inferer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inferer:
    """``patch_size``: voxels of one sliding-window patch, in the network's axis order."""

    patch_size: tuple[int, int, int]


def _sliding_window(inferer: dict, iname: str) -> tuple[tuple[int, int, int] | None, Notes]:
    """Patch size (``roi_size``, voxels) of a ``SlidingWindowInferer``, or None, and what of its
    options the node does otherwise."""
    notes = Notes()
    patch = None
    roi = inferer.get("roi_size")
    if isinstance(roi, Expr):
        notes.unmapped.append(f"inferer roi_size is an expression ({roi}), not evaluated")
    elif roi is not None:
        size = triple(roi, "inferer roi_size")
        if all(v > 0 for v in size):
            patch = tuple(int(v) for v in size)
            notes.mapped.append(f"{iname} roi_size {list(patch)} -> patch_size (voxels)")
        else:
            notes.unmapped.append(f"inferer roi_size {roi}: values <= 0 (whole axis) not supported")
    overlap = inferer.get("overlap", 0.25)
    if overlap != 0.25:
        notes.unmapped.append(f"{iname} overlap {overlap}: the node uses 0.25")
    mode = inferer.get("mode", "constant")
    if mode != "gaussian":
        notes.unmapped.append(f"{iname} mode {mode!r}: the node blends windows with mode 'gaussian'")
    for opt in ("padding_mode", "sigma_scale", "cval"):
        if opt in inferer:
            notes.unmapped.append(f"{iname} {opt} {inferer[opt]!r}: the node uses its own")
    return patch, notes  # type: ignore[return-value]


def inferer(bundle_dir: Path, config: InferenceConfig, fmt: NetworkFormat) -> tuple[Inferer, Notes]:
    """The patch size: the ``SlidingWindowInferer`` ``roi_size``, else the input's
    ``spatial_shape``; the node always infers by sliding window (overlap 0.25, gaussian blend).

    Raises
    ------
    ValueError
        If neither gives three positive voxel counts, or ``roi_size`` is not three numbers.
    """
    patch: tuple[int, int, int] | None = None
    notes = Notes()
    section = config.value("inferer") if config.has("inferer") else None
    if isinstance(section, dict):
        iname = transform_name(section.get("_target_", ""))
        if iname.endswith("SlidingWindowInferer"):
            patch, notes = _sliding_window(section, iname)
        else:
            notes.unmapped.append(f"inferer {iname}: the node uses a sliding window over patches of the input size")
    elif config.path is not None:
        notes.unmapped.append("no inferer in the config: the node uses a sliding window over patches of the input size")
    if patch is None:
        shape = fmt.spatial_shape
        if not (isinstance(shape, list) and all(isinstance(v, int) and v > 0 for v in shape)):
            raise ValueError(f"{bundle_dir}: no patch size: neither inferer roi_size nor inputs.{fmt.image_key}."
                             f"spatial_shape ({shape}) gives one")
        patch = tuple(shape)
        notes.mapped.append(f"inputs.{fmt.image_key}.spatial_shape {shape} -> patch_size (voxels)")
    return Inferer(patch), notes


# --- postprocessing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Postprocessing:
    """``keeps_largest_component``: the bundle keeps the largest connected component, as the
    node always does."""

    keeps_largest_component: bool


def postprocessing(config: InferenceConfig) -> tuple[Postprocessing, Notes]:
    """The ``postprocessing`` transforms against what the node does after inference (argmax,
    back to the source grid, largest 3D connected component of each label, a DICOM SEG)."""
    transforms, notes = flatten(config.value("postprocessing"), "postprocessing") \
        if config.has("postprocessing") else ([], Notes())
    largest = False
    for t in transforms:
        tname = transform_name(t.get("_target_", ""))
        base = array_name(tname, set(NODE_POST))
        if base == "Activations" and t.get("sigmoid"):
            notes.unmapped.append(f"postprocessing {tname} sigmoid: the node takes the argmax over channels (channel "
                                  "0 background); overlapping sigmoid labels come out differently")
        elif base == "KeepLargestConnectedComponent":
            largest = True
            if t.get("applied_labels") is not None:
                notes.unmapped.append(f"postprocessing {tname} applied_labels {t.get('applied_labels')}: the node "
                                      "keeps the largest component of every label")
            else:
                notes.mapped.append(f"postprocessing {tname}: {NODE_POST[base]}")
        elif base in NODE_POST:
            notes.mapped.append(f"postprocessing {tname}: {NODE_POST[base]}")
        else:
            notes.unmapped.append(f"postprocessing {tname}: not applied (no equivalent in the node)")
    if not largest:
        notes.unmapped.append("the node keeps only the largest connected component of each label (the bundle does "
                              "not): structures in several parts lose the smaller ones")
    return Postprocessing(largest), notes

"""Import a MONAI bundle (MONAI Model Zoo format) as a dicom-ai model package.

A MONAI bundle (specification: https://docs.monai.io/en/stable/mb_specification.html) is a
folder with ``configs/metadata.json`` (version, description, authors, ...,
``network_data_format``: what the network takes and returns), an inference config
``configs/inference.json`` (or ``.yaml``/``.yml``; MONAI config syntax,
https://docs.monai.io/en/stable/config_syntax.html) with ``preprocessing``, ``inferer`` and
``postprocessing`` sections, the weights (``models/model.ts``: TorchScript, or ``models/model.pt``:
a state dict of the config's ``network_def``, a ``monai.networks.nets`` class), ``LICENSE`` and
``docs/README.md``. :func:`import_bundle` writes the equivalent dicom-ai package
(:mod:`dicom_ai.models.manifest`): ``manifest.json``, ``model.ts``, ``MODEL_CARD.md`` and the
licence files, and says line by line what it mapped and what it could not map.

What is mapped (bundle -> manifest):

============================================================ ===============================
``metadata.json`` ``name`` (slugified) or the folder name     ``name`` (or the ``name`` argument)
``metadata.json`` ``version``                                 ``version``
``metadata.json`` ``description``                             ``description``
``network_data_format.inputs.<image>.modality``               ``modality`` (``MRI`` -> ``MR``)
``preprocessing`` ``Orientationd`` ``axcodes``                ``axcodes`` (none: ``"RAS"``)
``preprocessing`` ``Spacingd`` ``pixdim`` (mm, axcodes order) ``spacing``
``ScaleIntensityRanged`` ``a_min``/``a_max`` (b 0..1, clip)   ``normalization "window"``, ``window``
``NormalizeIntensityd``                                       ``normalization "zscore"``
``inferer`` ``SlidingWindowInferer`` ``roi_size`` (voxels)    ``patch_size`` (else the input's ``spatial_shape``)
``network_data_format.outputs.pred.channel_def``              ``labels`` (channel index = label value, 0 left out)
``models/model.ts``                                           ``weights`` ``model.ts``, ``runtime "torchscript"``, ``sha256``
``models/model.pt`` + ``network_def`` (a MONAI network)       ``weights`` ``model.pt``, ``runtime "monai"``, ``network``
``LICENSE`` (+ ``copyright``), ``docs/data_license.txt``      ``license``, copied files
metadata text fields + ``docs/README.md``                     ``MODEL_CARD.md``
============================================================ ===============================

Labels are coded with SNOMED CT (category ``SCT 123037004 "Anatomical Structure"``, or
``SCT 49755003 "Morphologically Abnormal Structure"`` for lesions) from :data:`ORGAN_CODES`;
a channel name not in the table is coded ``SCT 85756007 "Tissue"`` and reported. Colours come
from :data:`PALETTE`. ``body_region`` is guessed from the labels' organs.

The config is read with MONAI's own :class:`monai.bundle.ConfigParser` (JSON and YAML, macros
and relative ids). References (``"@id"`` and ``"$@id"``) are followed; other ``"$"``
expressions are never evaluated (importing a bundle runs none of its code) and are reported
where they hold a value the import needs. Everything that has no equivalent in the node
(other transforms, inferer options, postprocessing) is listed in :attr:`BundleImport.unmapped`
together with what the node does instead.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dicom_ai.models.manifest import Code, Label, ModelManifest, NetworkSpec, sha256_of, write_manifest

#: The MONAI bundle specification this importer follows.
SPEC_URL = "https://docs.monai.io/en/stable/mb_specification.html"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

ANATOMY = Code(value="123037004", scheme="SCT", meaning="Anatomical Structure")
ABNORMAL = Code(value="49755003", scheme="SCT", meaning="Morphologically Abnormal Structure")
GENERIC = Code(value="85756007", scheme="SCT", meaning="Tissue")

#: SNOMED CT codes of structures named in MONAI Model Zoo bundles' ``channel_def``:
#: normalised name -> (code value, code meaning, body region or None). Codes checked against
#: pydicom's DICOM code dictionaries (``pydicom.sr.codedict``) or, for the lateralised
#: kidneys, lungs and lung lobes, against SNOMED CT's body-structure concepts.
ORGAN_CODES: dict[str, tuple[str, str, str | None]] = {
    "spleen": ("78961009", "Spleen", "ABDOMEN"),
    "liver": ("10200004", "Liver", "ABDOMEN"),
    "pancreas": ("15776009", "Pancreas", "ABDOMEN"),
    "kidney": ("64033007", "Kidney", "ABDOMEN"),
    "left kidney": ("18639004", "Left kidney", "ABDOMEN"),
    "right kidney": ("9846003", "Right kidney", "ABDOMEN"),
    "gallbladder": ("28231008", "Gallbladder", "ABDOMEN"),
    "stomach": ("69695003", "Stomach", "ABDOMEN"),
    "duodenum": ("38848004", "Duodenum", "ABDOMEN"),
    "small intestine": ("30315005", "Small intestine", "ABDOMEN"),
    "colon": ("71854001", "Colon", "ABDOMEN"),
    "adrenal gland": ("23451007", "Adrenal gland", "ABDOMEN"),
    "portal vein": ("32764006", "Portal vein", "ABDOMEN"),
    "splenic vein": ("35819009", "Splenic vein", "ABDOMEN"),
    "inferior vena cava": ("64131007", "Inferior vena cava", None),
    "aorta": ("15825003", "Aorta", None),
    "esophagus": ("32849002", "Esophagus", None),
    "lung": ("39607008", "Lung", "CHEST"),
    "left lung": ("44029006", "Left lung", "CHEST"),
    "right lung": ("3341006", "Right lung", "CHEST"),
    "upper lobe of left lung": ("44714003", "Upper lobe of left lung", "CHEST"),
    "lower lobe of left lung": ("41224006", "Lower lobe of left lung", "CHEST"),
    "upper lobe of right lung": ("42400003", "Upper lobe of right lung", "CHEST"),
    "middle lobe of right lung": ("72481006", "Middle lobe of right lung", "CHEST"),
    "trachea": ("44567001", "Trachea", "CHEST"),
    "heart": ("80891009", "Heart", "CHEST"),
    "urinary bladder": ("89837001", "Urinary bladder", "PELVIS"),
    "prostate": ("41216001", "Prostate", "PELVIS"),
    "rectum": ("34402009", "Rectum", "PELVIS"),
    "brain": ("12738006", "Brain", "HEAD"),
    "hippocampus": ("5366008", "Hippocampus", "HEAD"),
    "spinal cord": ("2748008", "Spinal cord", None),
    "vertebra": ("51282000", "Vertebra", None),
    "rib": ("113197003", "Rib", None),
    "femur": ("71341001", "Femur", None),
    "bone": ("272673000", "Bone", None),
}

#: Other spellings of :data:`ORGAN_CODES` names seen in zoo bundles.
ALIASES = {
    "ivc": "inferior vena cava",
    "bladder": "urinary bladder",
    "oesophagus": "esophagus",
    "gall bladder": "gallbladder",
    "small bowel": "small intestine",
    "lungs": "lung",
    "kidneys": "kidney",
    "left upper lobe": "upper lobe of left lung",
    "left lower lobe": "lower lobe of left lung",
    "right upper lobe": "upper lobe of right lung",
    "right middle lobe": "middle lobe of right lung",
}

#: Lesion words -> SNOMED CT morphology (category "Morphologically Abnormal Structure").
LESION_CODES: dict[str, tuple[str, str]] = {
    "tumor": ("108369006", "Neoplasm"),
    "tumour": ("108369006", "Neoplasm"),
    "neoplasm": ("108369006", "Neoplasm"),
    "cancer": ("108369006", "Neoplasm"),
    "lesion": ("52988006", "Lesion"),
    "nodule": ("27925004", "Nodule"),
    "mass": ("4147007", "Mass"),
    "cyst": ("367643001", "Cyst"),
    "edema": ("79654002", "Edema"),
    "necrosis": ("6574001", "Necrosis"),
}

#: Segment colours (RGB), label i gets ``PALETTE[(i - 1) % len(PALETTE)]``.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 90, 60), (60, 160, 230), (90, 200, 90), (240, 200, 60), (170, 100, 220),
    (240, 140, 200), (60, 200, 190), (200, 130, 60), (140, 140, 240), (180, 220, 100),
    (220, 60, 120), (100, 120, 160),
)

#: Preprocessing transforms the node does itself (reading, channel, type, device).
_NODE_PRE = {
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
_NODE_POST = {
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


@dataclass
class BundleImport:
    """The result of :func:`import_bundle`.

    Attributes
    ----------
    manifest:
        The manifest written to ``out_dir/manifest.json``.
    mapped:
        What was mapped, one line each (``"Spacingd pixdim [1.5, 1.5, 2.0] -> spacing"``).
    unmapped:
        What could not be mapped and what the package does instead, one line each; read them
        before enabling the model.
    """

    manifest: ModelManifest
    mapped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)


class _Expr(str):
    """A ``"$"`` expression of the config that was not evaluated."""


def is_bundle(path: Path) -> bool:
    """True when ``path`` is a folder with ``configs/metadata.json`` (a MONAI bundle)."""
    path = Path(path)
    return path.is_dir() and (path / "configs" / "metadata.json").is_file()


def slugify(text: str) -> str:
    """``"Spleen CT segmentation"`` -> ``"spleen-ct-segmentation"`` (the manifest's name pattern,
    at most 64 characters); empty when nothing is left."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower())
    slug = re.sub(r"-{2,}", "-", slug).lstrip("._-")[:64].rstrip("-")
    return slug


def _transform_name(target: Any) -> str:
    """``"monai.transforms.Spacingd"`` -> ``"Spacingd"``."""
    return str(target).lstrip("$").rsplit(".", 1)[-1].strip()


def _base(name: str, known: dict[str, str] | set[str]) -> str:
    """Dictionary transform name to its array name when that is known (``Spacingd`` -> ``Spacing``)."""
    if name.endswith("d") and name[:-1] in known:
        return name[:-1]
    return name


class _Config:
    """An inference config read by :class:`monai.bundle.ConfigParser`, values resolved without
    instantiating or evaluating anything."""

    def __init__(self, path: Path | None) -> None:
        from monai.bundle import ConfigParser

        self.parser = ConfigParser()
        self.path = path
        if path is not None:
            self.parser.read_config(str(path))
            self.parser.resolve_macro_and_relative_ids()

    def has(self, id: str) -> bool:
        return self.path is not None and id in self.parser

    def value(self, id: str, depth: int = 0) -> Any:
        """The config at ``id`` with references followed; unevaluated expressions as :class:`_Expr`."""
        return self._resolve(self.parser.get(id), depth)

    def _resolve(self, v: Any, depth: int) -> Any:
        if depth > 20:
            raise ValueError("config references nest more than 20 levels (a cycle?)")
        if isinstance(v, dict):
            return {k: self._resolve(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list):
            return [self._resolve(x, depth + 1) for x in v]
        if isinstance(v, str):
            ref = None
            if re.fullmatch(r"@[\w:#.-]+", v):
                ref = v[1:]
            elif re.fullmatch(r"\$\s*@[\w:#.-]+\s*", v):
                ref = v.strip()[2:]
            if ref is not None:
                ref = ref.replace("::", "#")
                if ref not in self.parser:
                    raise ValueError(f"config reference {v!r}: no {ref!r} in the config")
                return self.value(ref, depth + 1)
            if v.startswith("$"):
                return _Expr(v)
        return v


def _flatten(transforms: Any, config: _Config, notes: list[str], where: str) -> list[dict]:
    """The transforms of a Compose (nested Composes flattened), as dicts with ``_target_``."""
    out: list[dict] = []
    if isinstance(transforms, dict):
        if _transform_name(transforms.get("_target_", "")) == "Compose":
            return _flatten(transforms.get("transforms", []), config, notes, where)
        return [transforms]
    if isinstance(transforms, _Expr):
        notes.append(f"{where}: the transform list is an expression ({transforms}), not read")
        return out
    if not isinstance(transforms, list):
        return out
    for t in transforms:
        if isinstance(t, dict) and "_target_" in t:
            out.extend(_flatten(t, config, notes, where))
        elif isinstance(t, _Expr):
            notes.append(f"{where}: transform given as an expression ({t}), not read")
    return out


def _applies(t: dict, image_key: str) -> bool:
    keys = t.get("keys")
    if keys is None:
        return True
    if isinstance(keys, str):
        keys = [keys]
    return isinstance(keys, list) and image_key in keys


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} is {v!r}, not a number (expressions are not evaluated)")
    return float(v)


def _triple(v: Any, what: str) -> tuple[float, float, float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v, v, v]
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise ValueError(f"{what} is {v!r}: expected three values (a 3D network)")
    return tuple(_number(x, what) for x in v)  # type: ignore[return-value]


def _normalise_name(name: str) -> str:
    n = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    m = re.fullmatch(r"(.+) (left|right)", n)  # TotalSegmentator style: "kidney left"
    if m:
        n = f"{m.group(2)} {m.group(1)}"
    return ALIASES.get(n, n)


def code_label(index: int, name: str) -> tuple[Label, str | None, str | None]:
    """Code one output channel: (label, body region or None, note or None when not in the table)."""
    key = _normalise_name(name)
    color = PALETTE[(index - 1) % len(PALETTE)]
    if key in ORGAN_CODES:
        value, meaning, region = ORGAN_CODES[key]
        return Label(value=index, name=meaning, category=ANATOMY,
                     type=Code(value=value, scheme="SCT", meaning=meaning), color=color), region, None
    display = name.strip()[:1].upper() + name.strip()[1:]
    for word in re.split(r"\s+", key):
        if word in LESION_CODES:
            value, meaning = LESION_CODES[word]
            note = (f"channel {index} {name!r}: coded as SCT {value} {meaning!r} (Morphologically Abnormal "
                    f"Structure); any organ in its name is not coded")
            return Label(value=index, name=display, category=ABNORMAL,
                         type=Code(value=value, scheme="SCT", meaning=meaning), color=color), None, note
    note = (f"channel {index} {name!r} has no SNOMED CT code in our table: coded as SCT "
            f"{GENERIC.value} {GENERIC.meaning!r}; edit manifest.json to code it properly")
    return Label(value=index, name=display or f"Label {index}", category=GENERIC, type=GENERIC,
                 color=color), None, note


def _license_name(text: str) -> str:
    head = text[:2000]
    if re.search(r"Apache License", head) and re.search(r"Version 2\.0", head):
        return "Apache-2.0"
    if re.search(r"\bMIT License\b", head):
        return "MIT"
    m = re.search(r"Attribution[- ]NonCommercial[- ]ShareAlike 4\.0", head, re.I)
    if m:
        return "CC-BY-NC-SA-4.0"
    if re.search(r"Attribution[- ]NonCommercial 4\.0", head, re.I):
        return "CC-BY-NC-4.0"
    if re.search(r"Attribution 4\.0", head, re.I):
        return "CC-BY-4.0"
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""


def _find(folder: Path, *names: str) -> Path | None:
    """First existing file of ``names`` in ``folder``, matched case-insensitively."""
    if not folder.is_dir():
        return None
    files = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for n in names:
        if n.lower() in files:
            return files[n.lower()]
    return None


def _read_metadata(bundle_dir: Path) -> dict:
    path = bundle_dir / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return meta


def _inference_config(bundle_dir: Path, notes: list[str]) -> Path | None:
    configs = bundle_dir / "configs"
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = configs / name
        if path.is_file():
            if not name.endswith(".json") and importlib.util.find_spec("yaml") is None:  # a stripped install
                raise ValueError(f"{path}: reading YAML configs needs PyYAML (pip install pyyaml); "
                                 "only inference.json can be read without it")
            return path
    notes.append("no configs/inference.json or inference.yaml: preprocessing and inferer taken from "
                 "metadata only")
    return None


def _network_spec(config: "_Config", bundle_dir: Path) -> NetworkSpec:
    """The ``network_def`` of the config as a manifest network: a ``monai.networks.nets`` class
    and literal arguments (nothing evaluated).

    Raises
    ------
    ValueError
        If there is no ``network_def``, its ``_target_`` is not a MONAI network, or an argument
        is an expression.
    """
    from dicom_ai.infer.network import monai_network_class

    if not config.has("network_def"):
        raise ValueError(f"{bundle_dir}: models/model.pt needs a network_def in the inference config to build the "
                         "network; there is none (or export the model as models/model.ts)")
    definition = config.value("network_def")
    if not isinstance(definition, dict) or "_target_" not in definition:
        raise ValueError(f"{bundle_dir}: network_def is not an object with a _target_")
    target = str(definition["_target_"])
    monai_network_class(target)  # ValueError if not a MONAI network
    params = {k: v for k, v in definition.items() if not k.startswith("_")}

    def literal(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(literal(x) for x in v)
        if isinstance(v, dict):
            return all(literal(x) for x in v.values())
        return not isinstance(v, _Expr)

    expressions = sorted(k for k, v in params.items() if not literal(v))
    if expressions:
        raise ValueError(f"{bundle_dir}: network_def arguments {expressions} are expressions, which the import does "
                         "not evaluate; export the model as models/model.ts")
    return NetworkSpec(arch=f"monai.networks.nets.{target.rsplit('.', 1)[-1]}", params=params)


def import_bundle(bundle_dir: Path, out_dir: Path, *, name: str | None = None) -> BundleImport:
    """Write the dicom-ai model package equivalent to a MONAI bundle.

    Parameters
    ----------
    bundle_dir:
        The bundle folder (``configs/metadata.json``, ``configs/inference.json|yaml``,
        ``models/model.ts``, ``LICENSE``, ``docs/``), see :data:`SPEC_URL`.
    out_dir:
        Folder for the package; created, or must be empty. Receives ``manifest.json``,
        ``model.ts`` (or ``model.pt``), ``MODEL_CARD.md``, ``LICENSE`` and ``DATA_LICENSE.txt`` when the bundle
        has them.
    name:
        Package name (default: metadata ``name`` slugified, else the folder name).

    Returns
    -------
    BundleImport
        The manifest and the mapped / unmapped lines (module docstring: the mapping).

    Raises
    ------
    ValueError
        If ``bundle_dir`` is not a bundle; its metadata has no ``network_data_format`` (or no
        inputs / outputs); its output is not a segmentation (``format`` of ``outputs.pred``),
        has fewer than two channels, or its input is not one channel of a 3D image; it has no
        ``models/model.ts`` (or that is not TorchScript) and no ``models/model.pt`` with a
        ``network_def`` naming a ``monai.networks.nets`` class with literal arguments; no input spacing (``Spacingd``
        ``pixdim``) or patch size can be found; a needed value is an unevaluated expression;
        the YAML config cannot be read (no PyYAML); the name or version does not fit the
        manifest; ``out_dir`` is not empty.
    """
    bundle_dir = Path(bundle_dir)
    out_dir = Path(out_dir)
    if not is_bundle(bundle_dir):
        raise ValueError(f"{bundle_dir} is not a MONAI bundle: no configs/metadata.json ({SPEC_URL})")
    mapped: list[str] = []
    unmapped: list[str] = []
    meta = _read_metadata(bundle_dir)

    # --- network data format -------------------------------------------------------------
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
    fmt = str(pred.get("format", "")).lower()
    if fmt != "segmentation":
        raise ValueError(f"{bundle_dir}: output {out_key!r} has format {pred.get('format')!r}; only bundles "
                         "whose output format is 'segmentation' can be imported")
    if int(image.get("num_channels", 1)) != 1:
        raise ValueError(f"{bundle_dir}: input {image_key!r} has {image.get('num_channels')} channels; the node "
                         "feeds one image channel")
    shape = image.get("spatial_shape")
    if isinstance(shape, list) and len(shape) != 3:
        raise ValueError(f"{bundle_dir}: input spatial_shape {shape} is not 3D; only 3D networks can be imported")

    # --- weights -------------------------------------------------------------------------
    weights = bundle_dir / "models" / "model.ts"
    state_dict = bundle_dir / "models" / "model.pt"
    if not weights.is_file() and not state_dict.is_file():
        raise ValueError(f"{bundle_dir}: no models/model.ts (TorchScript) and no models/model.pt (state dict)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: the package folder must be new or empty")

    # --- identity ------------------------------------------------------------------------
    if name is None:
        name = slugify(str(meta.get("name", ""))) or slugify(bundle_dir.resolve().name)
        source = "metadata name" if slugify(str(meta.get("name", ""))) else "bundle folder name"
        mapped.append(f"{source} {meta.get('name', bundle_dir.name)!r} -> name {name!r}")
    if not _NAME_RE.match(name or "") or len(name) > 64:
        raise ValueError(f"name {name!r} does not fit the manifest pattern {_NAME_RE.pattern} (pass name=...)")
    version = str(meta.get("version", "")).strip()
    if not version:
        version = "0.0.0"
        unmapped.append("metadata has no version: version 0.0.0 assumed")
    elif not _VERSION_RE.match(version) or len(version) > 64:
        raise ValueError(f"metadata version {version!r} does not fit the manifest pattern {_VERSION_RE.pattern}")
    else:
        mapped.append(f"metadata version {version} -> version")
    description = str(meta.get("description", "") or meta.get("task", ""))
    if description:
        mapped.append("metadata description -> description")
    modality = str(image.get("modality", "")).strip().upper()
    if modality in ("MRI", "MR"):
        modality = "MR"
    if modality:
        mapped.append(f"inputs.{image_key}.modality {image.get('modality')} -> modality {modality}")
    else:
        modality = "CT"
        unmapped.append(f"inputs.{image_key} has no modality: CT assumed")

    # --- config: preprocessing -----------------------------------------------------------
    config_path = _inference_config(bundle_dir, unmapped)
    try:
        config = _Config(config_path)
    except Exception as exc:  # noqa: BLE001 - json, yaml and MONAI raise their own types
        raise ValueError(f"{config_path}: not readable by monai.bundle.ConfigParser: {exc}") from exc
    pre_id = next((i for i in ("preprocessing", "dataset#transform") if config.has(i)), None)
    pre = _flatten(config.value(pre_id), config, unmapped, "preprocessing") if pre_id else []
    if config.path is not None and pre_id is None:
        unmapped.append(f"{config.path.name} has no preprocessing section")
    axcodes: str | None = None
    spacing: tuple[float, float, float] | None = None
    normalization: str | None = None
    window: tuple[float, float] | None = None
    spacing_before_orientation = False
    for t in pre:
        tname = _transform_name(t.get("_target_", ""))
        base = _base(tname, set(_NODE_PRE) | {"Orientation", "Spacing", "ScaleIntensityRange",
                                              "NormalizeIntensity"})
        if not _applies(t, image_key):
            mapped.append(f"preprocessing {tname} (keys {t.get('keys')}): not applied to {image_key!r}, ignored")
            continue
        if base in _NODE_PRE:
            mapped.append(f"preprocessing {tname}: {_NODE_PRE[base]}")
        elif base == "Orientation":
            codes = t.get("axcodes")
            if not isinstance(codes, str) or not re.fullmatch(r"[SIPALRspalr]{3}", codes):
                unmapped.append(f"preprocessing {tname} axcodes {codes!r} not usable: RAS assumed")
                continue
            axcodes = codes.upper()
            mapped.append(f"{tname} axcodes {codes} -> axcodes")
        elif base == "Spacing":
            pixdim = t.get("pixdim")
            if isinstance(pixdim, _Expr):
                raise ValueError(f"preprocessing {tname} pixdim is an expression ({pixdim}), not evaluated; "
                                 "the node needs the input spacing")
            spacing = _triple(pixdim, f"{tname} pixdim")
            if any(v <= 0 for v in spacing):
                raise ValueError(f"{tname} pixdim {list(pixdim)}: a value <= 0 keeps the source spacing; the node "
                                 "resamples to a fixed spacing")
            spacing_before_orientation = axcodes is None
            mapped.append(f"{tname} pixdim {list(spacing)} -> spacing (mm)")
            mode = t.get("mode", "bilinear")
            mode = mode[0] if isinstance(mode, list) and mode else mode
            if str(mode).lower() not in ("bilinear", "trilinear", "1"):
                unmapped.append(f"{tname} mode {t.get('mode')!r}: the node resamples trilinearly")
        elif base == "ScaleIntensityRange":
            if normalization is not None:
                unmapped.append(f"preprocessing {tname}: a second intensity transform, not applied")
                continue
            a_min, a_max = _number(t.get("a_min"), f"{tname} a_min"), _number(t.get("a_max"), f"{tname} a_max")
            b_min = _number(t.get("b_min", 0.0) if t.get("b_min") is not None else 0.0, f"{tname} b_min")
            b_max = _number(t.get("b_max", 1.0) if t.get("b_max") is not None else 1.0, f"{tname} b_max")
            normalization, window = "window", (a_min, a_max)
            mapped.append(f"{tname} a_min {a_min:g} a_max {a_max:g} -> normalization window, window [{a_min:g}, {a_max:g}]")
            if (b_min, b_max) != (0.0, 1.0):
                unmapped.append(f"{tname} b_min {b_min:g} b_max {b_max:g}: the node scales the window to [0, 1]")
            if not t.get("clip", False):
                unmapped.append(f"{tname} clip false: the node clips to the window")
        elif base == "NormalizeIntensity":
            if normalization is not None:
                unmapped.append(f"preprocessing {tname}: a second intensity transform, not applied")
                continue
            normalization = "zscore"
            mapped.append(f"{tname} -> normalization zscore")
            for opt in ("nonzero", "channel_wise"):
                if t.get(opt):
                    unmapped.append(f"{tname} {opt} true: the node's zscore uses all voxels")
            for opt in ("subtrahend", "divisor"):
                if t.get(opt) is not None:
                    unmapped.append(f"{tname} {opt} {t.get(opt)}: the node uses the volume's mean and SD")
        else:
            unmapped.append(f"preprocessing {tname}: not applied (no equivalent in the node)")
    if axcodes is None:
        axcodes = "RAS"
        unmapped.append("no Orientationd in preprocessing: axcodes RAS assumed (MONAI's usual orientation)")
    elif spacing_before_orientation and spacing is not None:
        unmapped.append("Spacingd comes before Orientationd: pixdim taken in axcodes order")
    if spacing is None:
        raise ValueError(f"{bundle_dir}: no Spacingd pixdim in the preprocessing; the node needs the network's "
                         "input spacing")
    if normalization is None:
        normalization = "zscore"
        unmapped.append("no ScaleIntensityRanged or NormalizeIntensityd in the preprocessing: zscore "
                        "normalisation assumed; check the bundle's intensity scaling")

    # --- inferer -------------------------------------------------------------------------
    patch: tuple[int, int, int] | None = None
    inferer = config.value("inferer") if config.has("inferer") else None
    if isinstance(inferer, dict):
        iname = _transform_name(inferer.get("_target_", ""))
        if iname.endswith("SlidingWindowInferer"):
            roi = inferer.get("roi_size")
            if isinstance(roi, _Expr):
                unmapped.append(f"inferer roi_size is an expression ({roi}), not evaluated")
            elif roi is not None:
                triple = _triple(roi, "inferer roi_size")
                if all(v > 0 for v in triple):
                    patch = tuple(int(v) for v in triple)  # type: ignore[assignment]
                    mapped.append(f"{iname} roi_size {list(patch)} -> patch_size (voxels)")
                else:
                    unmapped.append(f"inferer roi_size {roi}: values <= 0 (whole axis) not supported")
            overlap = inferer.get("overlap", 0.25)
            if overlap != 0.25:
                unmapped.append(f"{iname} overlap {overlap}: the node uses 0.25")
            mode = inferer.get("mode", "constant")
            if mode != "gaussian":
                unmapped.append(f"{iname} mode {mode!r}: the node blends windows with mode 'gaussian'")
            for opt in ("padding_mode", "sigma_scale", "cval"):
                if opt in inferer:
                    unmapped.append(f"{iname} {opt} {inferer[opt]!r}: the node uses its own")
        else:
            unmapped.append(f"inferer {iname}: the node uses a sliding window over patches of the input size")
    elif config.path is not None:
        unmapped.append("no inferer in the config: the node uses a sliding window over patches of the input size")
    if patch is None:
        if isinstance(shape, list) and all(isinstance(v, int) and v > 0 for v in shape):
            patch = tuple(shape)  # type: ignore[assignment]
            mapped.append(f"inputs.{image_key}.spatial_shape {shape} -> patch_size (voxels)")
        else:
            raise ValueError(f"{bundle_dir}: no patch size: neither inferer roi_size nor inputs.{image_key}."
                             f"spatial_shape ({shape}) gives one")

    # --- postprocessing ------------------------------------------------------------------
    post = _flatten(config.value("postprocessing"), config, unmapped, "postprocessing") \
        if config.has("postprocessing") else []
    largest = False
    for t in post:
        tname = _transform_name(t.get("_target_", ""))
        base = _base(tname, set(_NODE_POST))
        if base == "Activations" and t.get("sigmoid"):
            unmapped.append(f"postprocessing {tname} sigmoid: the node takes the argmax over channels (channel 0 "
                            "background); overlapping sigmoid labels come out differently")
        elif base == "KeepLargestConnectedComponent":
            largest = True
            labels = t.get("applied_labels")
            if labels is not None:
                unmapped.append(f"postprocessing {tname} applied_labels {labels}: the node keeps the largest "
                                "component of every label")
            else:
                mapped.append(f"postprocessing {tname}: {_NODE_POST[base]}")
        elif base in _NODE_POST:
            mapped.append(f"postprocessing {tname}: {_NODE_POST[base]}")
        else:
            unmapped.append(f"postprocessing {tname}: not applied (no equivalent in the node)")
    if not largest:
        unmapped.append("the node keeps only the largest connected component of each label (the bundle does not): "
                        "structures in several parts lose the smaller ones")

    # --- labels --------------------------------------------------------------------------
    channels = pred.get("num_channels")
    channel_def = pred.get("channel_def") or {}
    try:
        defs = {int(k): str(v) for k, v in channel_def.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"outputs.{out_key}.channel_def {channel_def!r}: keys must be channel numbers") from exc
    n = int(channels) if isinstance(channels, int) else (max(defs) + 1 if defs else 0)
    if n < 2:
        raise ValueError(f"{bundle_dir}: output {out_key!r} has {n} channel(s); the node needs one channel per "
                         "class with channel 0 the background (argmax)")
    if n > 256:
        raise ValueError(f"{bundle_dir}: output {out_key!r} has {n} channels; a label mask holds at most 255 labels")
    if defs.get(0, "background").strip().lower() not in ("background", "bg", "other", "everything else"):
        unmapped.append(f"channel 0 is {defs[0]!r}: the node treats channel 0 as background")
    labels: list[Label] = []
    regions: set[str] = set()
    for index in range(1, n):
        cname = defs.get(index)
        if cname is None:
            cname = f"label {index}"
            unmapped.append(f"channel {index} has no channel_def entry: named {cname!r}")
        label, region, note = code_label(index, cname)
        labels.append(label)
        if region:
            regions.add(region)
        if note:
            unmapped.append(note)
        else:
            mapped.append(f"outputs.{out_key}.channel_def {index} {cname!r} -> label {index} {label.name!r}, "
                          f"SCT {label.type.value} {label.type.meaning!r}")
    if len(regions) == 1:
        body_region = next(iter(regions))
        mapped.append(f"labels -> body_region {body_region}")
    else:
        body_region = "WHOLEBODY"
        why = f"its labels lie in {', '.join(sorted(regions))}" if regions else "no label names a known region"
        unmapped.append(f"a bundle names no body region and {why}: body_region WHOLEBODY assumed (the model is "
                        "routed to series of any body part)")

    # --- license -------------------------------------------------------------------------
    license_file = _find(bundle_dir, "LICENSE", "LICENSE.txt", "LICENSE.md")
    data_license = _find(bundle_dir / "docs", "data_license.txt", "data_license.md")
    parts = []
    if meta.get("license"):
        parts.append(str(meta["license"]))
        mapped.append("metadata license -> license")
    if license_file is not None:
        lic = _license_name(license_file.read_text(encoding="utf-8", errors="replace"))
        if lic and lic not in parts:
            parts.append(f"{lic} (LICENSE)")
        mapped.append(f"{license_file.name} ({lic}) -> license, copied as LICENSE")
    if meta.get("copyright"):
        parts.append(str(meta["copyright"]))
    if data_license is not None:
        parts.append("training data: see DATA_LICENSE.txt")
        mapped.append(f"docs/{data_license.name} -> DATA_LICENSE.txt")
    if license_file is None and not meta.get("license"):
        unmapped.append("no LICENSE file and no metadata license: the licence is unknown; check before use")
    license_text = "; ".join(parts)

    # --- package -------------------------------------------------------------------------
    if weights.is_file():
        try:
            import torch

            torch.jit.load(str(weights), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / ValueError variants
            raise ValueError(f"{weights}: not a TorchScript archive: {exc}") from exc
        runtime, network = "torchscript", None
        mapped.append("models/model.ts -> weights model.ts, runtime torchscript, sha256")
    else:
        runtime, network, weights = "monai", _network_spec(config, bundle_dir), state_dict
        mapped.append(f"network_def {network.arch} -> network (runtime monai); models/model.pt -> weights "
                      "model.pt, sha256")
    try:
        manifest = ModelManifest(
            name=name, version=version, task="segmentation", description=description,
            modality=modality, body_region=body_region, axcodes=axcodes, spacing=spacing,
            normalization=normalization, window=window, patch_size=patch, runtime=runtime, network=network,
            weights=weights.name, sha256=sha256_of(weights), labels=labels, license=license_text,
            model_card="MODEL_CARD.md",
        )
    except ValidationError as exc:
        raise ValueError(f"{bundle_dir}: the imported manifest is not valid: {exc}") from exc

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, out_dir / weights.name)
    if license_file is not None:
        shutil.copyfile(license_file, out_dir / "LICENSE")
    if data_license is not None:
        shutil.copyfile(data_license, out_dir / "DATA_LICENSE.txt")
    readme = _find(bundle_dir / "docs", "README.md", "readme.md")
    if readme is not None:
        mapped.append(f"docs/{readme.name} -> MODEL_CARD.md (appended)")
    (out_dir / "MODEL_CARD.md").write_text(
        model_card(meta, manifest, bundle_dir, mapped, unmapped, readme), encoding="utf-8")
    write_manifest(out_dir, manifest)
    return BundleImport(manifest=manifest, mapped=mapped, unmapped=unmapped)


def _text(v: Any) -> str:
    if isinstance(v, list):
        return "\n".join(f"- {x}" for x in v)
    if isinstance(v, dict):
        return "\n".join(f"- {k}: {x}" for k, x in v.items())
    return str(v)


def model_card(meta: dict, manifest: ModelManifest, bundle_dir: Path, mapped: list[str], unmapped: list[str],
               readme: Path | None) -> str:
    """The ``MODEL_CARD.md`` of an imported bundle: metadata sections, input/output, the import
    notes, then the bundle's ``docs/README.md``."""
    title = meta.get("name") or manifest.name
    lines = [f"# {title} {manifest.version}", "",
             f"Imported from the MONAI bundle `{bundle_dir.name}` (format: {SPEC_URL}) on "
             f"{_dt.date.today().isoformat()}; MONAI {meta.get('monai_version', '?')}, "
             f"PyTorch {meta.get('pytorch_version', '?')}.", ""]
    sections = [
        ("Description", "description"), ("Task", "task"), ("Authors", "authors"), ("Authors", "authorship"),
        ("Copyright", "copyright"), ("Intended use", "intended_use"), ("Data", "data_source"),
        ("Data type", "data_type"), ("Image", "image_classes"), ("Labels", "label_classes"),
        ("Prediction", "pred_classes"), ("Evaluation", "eval_metrics"), ("References", "references"),
    ]
    for heading, key in sections:
        if meta.get(key):
            lines += [f"## {heading}", "", _text(meta[key]), ""]
    labels = ", ".join(f"{lb.value} {lb.name} (SCT {lb.type.value})" for lb in manifest.labels)
    window = f", window {list(manifest.window)}" if manifest.window else ""
    lines += ["## Input and output in dicom-ai", "",
              f"- {manifest.modality}, axes {manifest.axcodes}, spacing {list(manifest.spacing)} mm, "
              f"patch {list(manifest.patch_size)}, normalization {manifest.normalization}{window}",
              f"- labels: {labels}", f"- licence: {manifest.license or 'unknown'}", "",
              "## Import notes", "", "Mapped:", ""]
    lines += [f"- {m}" for m in mapped] + ["", "Not mapped:", ""]
    lines += [f"- {u}" for u in unmapped] or ["- nothing"]
    lines.append("")
    if readme is not None:
        lines += ["## Bundle documentation (docs/README.md)", "",
                  readme.read_text(encoding="utf-8", errors="replace").strip(), ""]
    return "\n".join(lines)

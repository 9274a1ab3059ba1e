"""Reading a MONAI bundle without running it: ``configs/metadata.json`` and the inference config.

The inference config (``configs/inference.json``, ``.yaml`` or ``.yml``; MONAI config syntax,
https://docs.monai.io/en/stable/config_syntax.html) is read with MONAI's own
:class:`monai.bundle.ConfigParser` (JSON and YAML, macros and relative ids). References
(``"@id"`` and ``"$@id"``) are followed; other ``"$"`` expressions are never evaluated
(importing a bundle runs none of its code): they come back as :class:`Expr` so that a step of
:mod:`dicom_ai.models.bundle_mapping` can say where it met one. The helpers here read the
``Compose`` transform lists and the literal values a step needs.

Every step of the import returns its :class:`Notes`: what it mapped and what it could not map.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The MONAI bundle specification this importer follows.
SPEC_URL = "https://docs.monai.io/en/stable/mb_specification.html"


@dataclass
class Notes:
    """What one step of the import mapped and what it could not map, one line each.

    Attributes
    ----------
    mapped:
        ``"Spacingd pixdim [1.5, 1.5, 2.0] -> spacing (mm)"``, ...
    unmapped:
        What has no equivalent in the node and what the package does instead.
    """

    mapped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def extend(self, other: Notes) -> None:
        """Append ``other``'s lines after these (both lists keep their order)."""
        self.mapped.extend(other.mapped)
        self.unmapped.extend(other.unmapped)


class Expr(str):
    """A ``"$"`` expression of the config that was not evaluated."""


class InferenceConfig:
    """An inference config read by :class:`monai.bundle.ConfigParser`, values resolved without
    instantiating or evaluating anything; empty when the bundle has no inference config.

    Parameters
    ----------
    path:
        ``configs/inference.json`` / ``.yaml`` / ``.yml``, or None.

    Raises
    ------
    Exception
        What json, yaml or MONAI raise for a config they cannot read.
    """

    def __init__(self, path: Path | None) -> None:
        from monai.bundle import ConfigParser  # deferred: MONAI loads torch

        self.parser = ConfigParser()
        self.path = path
        if path is not None:
            self.parser.read_config(str(path))
            self.parser.resolve_macro_and_relative_ids()

    def has(self, id: str) -> bool:
        """True when the config has the id (``"preprocessing"``, ``"dataset#transform"``)."""
        return self.path is not None and id in self.parser

    def value(self, id: str, depth: int = 0) -> Any:
        """The config at ``id`` with references followed; unevaluated expressions as :class:`Expr`.

        Raises
        ------
        ValueError
            If a reference names no id of the config, or references nest more than 20 levels.
        """
        return self._resolve(self.parser.get(id), depth)

    def _resolve(self, v: Any, depth: int) -> Any:
        if depth > 20:
            raise ValueError("config references nest more than 20 levels (a cycle?)")
        if isinstance(v, dict):
            return {k: self._resolve(x, depth + 1) for k, x in v.items()}
        if isinstance(v, list):
            return [self._resolve(x, depth + 1) for x in v]
        if not isinstance(v, str):
            return v
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
        return Expr(v) if v.startswith("$") else v


def read_metadata(bundle_dir: Path) -> dict:
    """``configs/metadata.json`` of a bundle.

    Raises
    ------
    ValueError
        If it is not readable JSON or not a JSON object.
    """
    path = bundle_dir / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return meta


def read_inference_config(bundle_dir: Path) -> tuple[InferenceConfig, Notes]:
    """The bundle's inference config (``configs/inference.json``, else ``.yaml``, else ``.yml``),
    empty when it has none (a note says so).

    Raises
    ------
    ValueError
        If the config is YAML and PyYAML is not installed, or the config cannot be read.
    """
    notes = Notes()
    path = None
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        candidate = bundle_dir / "configs" / name
        if candidate.is_file():
            if not name.endswith(".json") and importlib.util.find_spec("yaml") is None:  # a stripped install
                raise ValueError(f"{candidate}: reading YAML configs needs PyYAML (pip install pyyaml); "
                                 "only inference.json can be read without it")
            path = candidate
            break
    else:
        notes.unmapped.append("no configs/inference.json or inference.yaml: preprocessing and inferer taken from "
                              "metadata only")
    try:
        return InferenceConfig(path), notes
    except Exception as exc:  # noqa: BLE001 - json, yaml and MONAI raise their own types
        raise ValueError(f"{path}: not readable by monai.bundle.ConfigParser: {exc}") from exc


def transform_name(target: Any) -> str:
    """``"monai.transforms.Spacingd"`` -> ``"Spacingd"``."""
    return str(target).lstrip("$").rsplit(".", 1)[-1].strip()


def array_name(name: str, known: dict[str, str] | set[str]) -> str:
    """Dictionary transform name to its array name when that is known (``Spacingd`` -> ``Spacing``)."""
    if name.endswith("d") and name[:-1] in known:
        return name[:-1]
    return name


def flatten(transforms: Any, where: str) -> tuple[list[dict], Notes]:
    """The transforms of a Compose (nested Composes flattened), as dicts with ``_target_``;
    transforms given as expressions are noted and left out."""
    notes = Notes()
    if isinstance(transforms, dict):
        if transform_name(transforms.get("_target_", "")) == "Compose":
            return flatten(transforms.get("transforms", []), where)
        return [transforms], notes
    if isinstance(transforms, Expr):
        notes.unmapped.append(f"{where}: the transform list is an expression ({transforms}), not read")
        return [], notes
    out: list[dict] = []
    for t in transforms if isinstance(transforms, list) else []:
        if isinstance(t, dict) and "_target_" in t:
            inner, inner_notes = flatten(t, where)
            out.extend(inner)
            notes.extend(inner_notes)
        elif isinstance(t, Expr):
            notes.unmapped.append(f"{where}: transform given as an expression ({t}), not read")
    return out, notes


def applies(t: dict, image_key: str) -> bool:
    """True when a transform acts on the image (no ``keys``, or ``keys`` naming ``image_key``)."""
    keys = t.get("keys")
    if keys is None:
        return True
    if isinstance(keys, str):
        keys = [keys]
    return isinstance(keys, list) and image_key in keys


def number(v: Any, what: str) -> float:
    """A literal number of the config.

    Raises
    ------
    ValueError
        If ``v`` is not a number (an expression, a string, a boolean).
    """
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{what} is {v!r}, not a number (expressions are not evaluated)")
    return float(v)


def triple(v: Any, what: str) -> tuple[float, float, float]:
    """Three numbers (one number stands for three), in the order the config gives them.

    Raises
    ------
    ValueError
        If ``v`` is not one or three numbers (a 3D network).
    """
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v, v, v]
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise ValueError(f"{what} is {v!r}: expected three values (a 3D network)")
    return tuple(number(x, what) for x in v)  # type: ignore[return-value]

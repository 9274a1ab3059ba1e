"""The last steps of the MONAI bundle import: licence, weights and writing the package.

The package (:mod:`dicom_ai.package.manifest`) gets the bundle's weights (``models/model.ts``,
TorchScript, or ``models/model.pt``, a state dict of the config's ``network_def``), its
``LICENSE`` and ``docs/data_license.txt`` (as ``DATA_LICENSE.txt``), a ``MODEL_CARD.md`` made
of the metadata's text fields, the import notes and the bundle's ``docs/README.md``, and
``manifest.json``.
"""

from __future__ import annotations

import datetime as _dt
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_ai.models.bundle_config import SPEC_URL, Expr, InferenceConfig, Notes
from dicom_ai.package.manifest import ModelManifest, NetworkSpec, write_manifest


def find(folder: Path, *names: str) -> Path | None:
    """First existing file of ``names`` in ``folder``, matched case-insensitively."""
    if not folder.is_dir():
        return None
    files = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    for n in names:
        if n.lower() in files:
            return files[n.lower()]
    return None


def check_sources(bundle_dir: Path, out_dir: Path) -> None:
    """Refuse before anything is read further: a bundle without weights, a package folder in use.

    Raises
    ------
    ValueError
        If there is neither ``models/model.ts`` nor ``models/model.pt``, or ``out_dir`` exists
        and is not an empty folder.
    """
    if not (bundle_dir / "models" / "model.ts").is_file() and not (bundle_dir / "models" / "model.pt").is_file():
        raise ValueError(f"{bundle_dir}: no models/model.ts (TorchScript) and no models/model.pt (state dict)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir}: the package folder must be new or empty")


# --- licence -----------------------------------------------------------------------------------


def license_name(text: str) -> str:
    """SPDX id of a well-known licence text (Apache-2.0, MIT, CC-BY-4.0, CC-BY-NC-4.0,
    CC-BY-NC-SA-4.0), else its first non-empty line (at most 120 characters), else empty."""
    head = text[:2000]
    if re.search(r"Apache License", head) and re.search(r"Version 2\.0", head):
        return "Apache-2.0"
    if re.search(r"\bMIT License\b", head):
        return "MIT"
    if re.search(r"Attribution[- ]NonCommercial[- ]ShareAlike 4\.0", head, re.I):
        return "CC-BY-NC-SA-4.0"
    if re.search(r"Attribution[- ]NonCommercial 4\.0", head, re.I):
        return "CC-BY-NC-4.0"
    if re.search(r"Attribution 4\.0", head, re.I):
        return "CC-BY-4.0"
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""


@dataclass(frozen=True)
class Licence:
    """``text``: the manifest's ``license``; ``license_file`` / ``data_license``: the bundle's
    ``LICENSE`` and ``docs/data_license.*``, copied into the package (None: absent)."""

    text: str
    license_file: Path | None
    data_license: Path | None


def licence(bundle_dir: Path, meta: dict) -> tuple[Licence, Notes]:
    """The licence: metadata ``license``, the ``LICENSE`` file's licence, metadata
    ``copyright`` and a pointer to the training data's licence, joined by ``"; "``."""
    notes = Notes()
    license_file = find(bundle_dir, "LICENSE", "LICENSE.txt", "LICENSE.md")
    data_license = find(bundle_dir / "docs", "data_license.txt", "data_license.md")
    parts = []
    if meta.get("license"):
        parts.append(str(meta["license"]))
        notes.mapped.append("metadata license -> license")
    if license_file is not None:
        lic = license_name(license_file.read_text(encoding="utf-8", errors="replace"))
        if lic and lic not in parts:
            parts.append(f"{lic} (LICENSE)")
        notes.mapped.append(f"{license_file.name} ({lic}) -> license, copied as LICENSE")
    if meta.get("copyright"):
        parts.append(str(meta["copyright"]))
    if data_license is not None:
        parts.append("training data: see DATA_LICENSE.txt")
        notes.mapped.append(f"docs/{data_license.name} -> DATA_LICENSE.txt")
    if license_file is None and not meta.get("license"):
        notes.unmapped.append("no LICENSE file and no metadata license: the licence is unknown; check before use")
    return Licence("; ".join(parts), license_file, data_license), notes


# --- weights -----------------------------------------------------------------------------------


def _literal(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return all(_literal(x) for x in v)
    if isinstance(v, dict):
        return all(_literal(x) for x in v.values())
    return not isinstance(v, Expr)


def network_spec(config: InferenceConfig, bundle_dir: Path) -> NetworkSpec:
    """The ``network_def`` of the config as a manifest network: a ``monai.networks.nets`` class
    and literal arguments (nothing evaluated).

    Raises
    ------
    ValueError
        If there is no ``network_def``, its ``_target_`` is not a MONAI network, or an argument
        is an expression.
    """
    from dicom_ai.package.network import monai_network_class  # deferred: start-up time (torch)

    if not config.has("network_def"):
        raise ValueError(f"{bundle_dir}: models/model.pt needs a network_def in the inference config to build the "
                         "network; there is none (or export the model as models/model.ts)")
    definition = config.value("network_def")
    if not isinstance(definition, dict) or "_target_" not in definition:
        raise ValueError(f"{bundle_dir}: network_def is not an object with a _target_")
    target = str(definition["_target_"])
    monai_network_class(target)  # ValueError if not a MONAI network
    params = {k: v for k, v in definition.items() if not k.startswith("_")}
    expressions = sorted(k for k, v in params.items() if not _literal(v))
    if expressions:
        raise ValueError(f"{bundle_dir}: network_def arguments {expressions} are expressions, which the import does "
                         "not evaluate; export the model as models/model.ts")
    return NetworkSpec(arch=f"monai.networks.nets.{target.rsplit('.', 1)[-1]}", params=params)


@dataclass(frozen=True)
class Weights:
    """``path``: the weights file to copy; ``runtime``: ``"torchscript"`` or ``"monai"``;
    ``network``: the MONAI network of a state dict (None for TorchScript)."""

    path: Path
    runtime: str
    network: NetworkSpec | None


def weights(bundle_dir: Path, config: InferenceConfig) -> tuple[Weights, Notes]:
    """``models/model.ts`` when there is one (it must load as TorchScript), else
    ``models/model.pt`` with the config's ``network_def`` (:func:`network_spec`).

    Raises
    ------
    ValueError
        If ``model.ts`` is not a TorchScript archive, or as :func:`network_spec`.
    """
    notes = Notes()
    torchscript = bundle_dir / "models" / "model.ts"
    if not torchscript.is_file():
        network = network_spec(config, bundle_dir)
        notes.mapped.append(f"network_def {network.arch} -> network (runtime monai); models/model.pt -> weights "
                            "model.pt, sha256")
        return Weights(bundle_dir / "models" / "model.pt", "monai", network), notes
    try:
        import torch  # deferred: start-up time

        torch.jit.load(str(torchscript), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / ValueError variants
        raise ValueError(f"{torchscript}: not a TorchScript archive: {exc}") from exc
    notes.mapped.append("models/model.ts -> weights model.ts, runtime torchscript, sha256")
    return Weights(torchscript, "torchscript", None), notes


# --- package -----------------------------------------------------------------------------------


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


def write_package(out_dir: Path, bundle_dir: Path, meta: dict, manifest: ModelManifest, weights: Weights,
                  licence: Licence, notes: Notes) -> Notes:
    """Write the package folder: the weights, ``LICENSE``, ``DATA_LICENSE.txt``,
    ``MODEL_CARD.md`` (with ``notes`` and this step's own) and ``manifest.json``.

    Returns
    -------
    Notes
        This step's notes (the bundle's ``docs/README.md`` appended to the model card).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights.path, out_dir / weights.path.name)
    if licence.license_file is not None:
        shutil.copyfile(licence.license_file, out_dir / "LICENSE")
    if licence.data_license is not None:
        shutil.copyfile(licence.data_license, out_dir / "DATA_LICENSE.txt")
    own = Notes()
    readme = find(bundle_dir / "docs", "README.md", "readme.md")
    if readme is not None:
        own.mapped.append(f"docs/{readme.name} -> MODEL_CARD.md (appended)")
    card = model_card(meta, manifest, bundle_dir, notes.mapped + own.mapped, notes.unmapped + own.unmapped, readme)
    (out_dir / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    write_manifest(out_dir, manifest)
    return own

"""Which model runs on which series.

A series is offered to every enabled model; a model fires when the series' modality is one it
accepts, its Body Part Examined (0018,0015) is one accepted for the model's body region (or
the series leaves it empty), and it has at least the model's minimum number of image instances.
The accepted Body Part Examined values come from :data:`REGION_BODY_PARTS` (defined terms of
PS3.16 CID 4031 and what scanners write) unless the ``[[models]]`` entry lists its own
``body_parts`` (an empty list accepts any).
The reason a model did not fire is recorded on the series (``routing_note``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dicom_ai.config import ModelEntry, Settings, default_model_path
from dicom_ai.models.manifest import ModelManifest, load_manifest

log = logging.getLogger(__name__)


#: Body Part Examined values that cover a model's ``body_region``.
REGION_BODY_PARTS: dict[str, tuple[str, ...]] = {
    "CHEST": ("CHEST", "LUNG", "THORAX", "CHESTABDOMEN", "CHESTABDPELVIS", "CHEST_TO_PELVIS",
              "TORSO", "WHOLEBODY", "PARTIALBODY"),
    "ABDOMEN": ("ABDOMEN", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS", "CHEST_TO_PELVIS",
                "TORSO", "WHOLEBODY", "PARTIALBODY"),
    "HEAD": ("HEAD", "BRAIN", "SKULL", "HEADNECK", "WHOLEBODY"),
}


def body_parts_for(region: str) -> tuple[str, ...]:
    """Body Part Examined values accepted for a model's body region."""
    region = region.upper()
    return REGION_BODY_PARTS.get(region, (region,))


@dataclass(frozen=True)
class RoutableModel:
    """An enabled model package and the conditions under which it runs."""

    path: Path
    manifest: ModelManifest
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]  # empty: any

    @property
    def label(self) -> str:
        return f"{self.manifest.name} {self.manifest.version}"


def enabled_models(settings: Settings) -> list[RoutableModel]:
    """The enabled models of the configuration (the shipped lung model when none is listed)."""
    entries = settings.models or [ModelEntry(path=default_model_path())]
    out = []
    for entry in entries:
        if not entry.enabled:
            continue
        try:
            manifest = load_manifest(entry.path)
        except (OSError, ValueError) as exc:
            # the node keeps receiving; the admin sees why the model is not offered
            log.error("model package %s not usable, skipped: %s", entry.path, exc)
            continue
        modalities = tuple(m.upper() for m in (entry.modalities or [manifest.modality]))
        if entry.body_parts is None:
            body_parts = body_parts_for(manifest.body_region)
        else:
            body_parts = tuple(b.upper() for b in entry.body_parts)
        out.append(RoutableModel(entry.path, manifest, modalities, body_parts))
    return out


def match(model: RoutableModel, modality: str, body_part: str, n_images: int) -> str | None:
    """None when ``model`` should run on a series with these attributes, else the reason not."""
    if modality.upper() not in model.modalities:
        return f"modality {modality or 'empty'} not in {list(model.modalities)}"
    if model.body_parts and body_part and body_part.upper() not in model.body_parts:
        return f"body part {body_part} not in {list(model.body_parts)}"
    if n_images < model.manifest.min_slices:
        return f"{n_images} image instances, fewer than {model.manifest.min_slices}"
    return None

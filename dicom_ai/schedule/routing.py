"""Which model runs on which series: routing rules.

A complete series is tested against every enabled rule (``[[rules]]``, see
:class:`dicom_ai.config.Rule`) of every enabled model. A model without a rule of its own gets a
default rule: the series' modality is one the model accepts, its Body Part Examined (0018,0015)
is one accepted for the model's body region (or the series leaves it empty), and it has at least
the model's minimum number of images, localizers not counted. The accepted Body Part Examined
values come from :data:`REGION_BODY_PARTS` (defined terms of PS3.16 CID 4031 and what scanners
write) unless the ``[[models]]`` entry lists its own ``body_parts`` (an empty list accepts any).
Each rule's outcome, and for a rule that did not fire the conditions that failed, is recorded on
the series (``routing_note``) and printed by ``dicom-ai rules test``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from dicom_ai.config import ModelEntry, Rule, Settings, default_model_path
from dicom_ai.models.registry import active_versions, generation
from dicom_ai.package.manifest import ModelManifest, load_manifest
from dicom_ai.schedule.facts import SeriesFacts

log = logging.getLogger(__name__)


#: Body Part Examined values that cover a model's ``body_region``.
REGION_BODY_PARTS: dict[str, tuple[str, ...]] = {
    "CHEST": ("CHEST", "LUNG", "THORAX", "CHESTABDOMEN", "CHESTABDPELVIS", "CHEST_TO_PELVIS",
              "TORSO", "WHOLEBODY", "PARTIALBODY"),
    "ABDOMEN": ("ABDOMEN", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS", "CHEST_TO_PELVIS",
                "TORSO", "WHOLEBODY", "PARTIALBODY"),
    "HEAD": ("HEAD", "BRAIN", "SKULL", "HEADNECK", "WHOLEBODY"),
}


#: Body regions of models that take any part of the body (no Body Part Examined condition).
ANY_REGION = ("WHOLEBODY", "ANY")


def body_parts_for(region: str) -> tuple[str, ...]:
    """Body Part Examined values accepted for a model's body region."""
    region = region.upper()
    if region in ANY_REGION:
        return ()
    return REGION_BODY_PARTS.get(region, (region,))


@dataclass(frozen=True)
class RoutableModel:
    """An enabled model package and the conditions under which it runs."""

    path: Path
    manifest: ModelManifest
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]  # empty: any
    destinations: tuple[str, ...] | None = None  # of its default rule; None: all
    review: bool = False  # its results wait for a clinician's approval (``[[models]] review``)

    @property
    def label(self) -> str:
        return f"{self.manifest.name} {self.manifest.version}"


def enabled_models(settings: Settings, sessions: sessionmaker | None = None) -> list[RoutableModel]:
    """The models the node runs: the enabled ``[[models]]`` entries of the configuration, then
    the active versions of the model registry (:mod:`dicom_ai.models.registry`) when ``sessions``
    is given. A configuration entry pins its model: a registry version of the same name is then
    left out, with a warning. With neither, the shipped lung model."""
    out = [m for m in map(_routable, (e for e in settings.models if e.enabled)) if m is not None]
    if sessions is not None:
        pinned = {m.manifest.name for m in out}
        for row in active_versions(sessions):
            if row.name in pinned:
                log.warning("model %s %s of the registry not used: [[models]] in the configuration pins %s",
                            row.name, row.version, row.name)
                continue
            model = _routable(ModelEntry(path=Path(row.path)))
            if model is not None:
                out.append(model)
    if not out and not settings.models and (sessions is None or not _registry_used(sessions)):
        out = [m for m in [_routable(ModelEntry(path=default_model_path()))] if m is not None]
    return out


def _routable(entry: ModelEntry) -> RoutableModel | None:
    """The entry's package with its routing conditions; None (and an error in the log) if its
    manifest cannot be read."""
    try:
        manifest = load_manifest(entry.path)
    except (OSError, ValueError) as exc:
        # the node keeps receiving; the admin sees why the model is not offered
        log.error("model package %s not usable, skipped: %s", entry.path, exc)
        return None
    modalities = tuple(m.upper() for m in (entry.modalities or [manifest.modality]))
    if entry.body_parts is None:
        body_parts = body_parts_for(manifest.body_region)
    else:
        body_parts = tuple(b.upper() for b in entry.body_parts)
    destinations = tuple(entry.destinations) if entry.destinations is not None else None
    return RoutableModel(entry.path, manifest, modalities, body_parts, destinations, entry.review)


def _registry_used(sessions: sessionmaker) -> bool:
    return generation(sessions) > 0


def default_rule(model: RoutableModel) -> Rule:
    """The rule of a model that has none in ``[[rules]]``."""
    return Rule(
        name=f"{model.manifest.name} (default)",
        model=model.manifest.name,
        modalities=list(model.modalities),
        body_parts=list(model.body_parts) or None,
        min_instances=model.manifest.min_slices,
        destinations=list(model.destinations) if model.destinations is not None else None,
        review=model.review,
    )


@dataclass(frozen=True)
class Route:
    """A rule and the enabled model it starts."""

    rule: Rule
    model: RoutableModel

    @property
    def review(self) -> bool:
        """Whether the results of its jobs wait for a clinician's approval: the rule's
        ``review``, else the model's."""
        return self.rule.review if self.rule.review is not None else self.model.review


def routes(settings: Settings, models: list[RoutableModel]) -> list[Route]:
    """The enabled rules bound to enabled models, highest priority first.

    A rule naming a model that is not enabled is skipped with an error in the log (the node
    keeps running; ``dicom-ai rules test`` shows it too).
    """
    by_name = {m.manifest.name: m for m in models}
    out = []
    for rule in settings.rules:
        if not rule.enabled:
            continue
        if rule.model not in by_name:
            log.error("rule %r names model %r, which is not enabled; rule skipped", rule.name, rule.model)
            continue
        out.append(Route(rule, by_name[rule.model]))
    ruled = {r.model for r in settings.rules}
    out += [Route(default_rule(m), m) for m in models if m.manifest.name not in ruled]
    return sorted(out, key=lambda r: -r.rule.priority)


def conditions(rule: Rule, facts: SeriesFacts) -> list[tuple[str, bool]]:
    """Each condition the rule sets, as ``(description, passed)``; the guard not included."""
    out: list[tuple[str, bool]] = []
    if rule.modalities is not None:
        want = [m.upper() for m in rule.modalities]
        out.append((f"modality {facts.modality or 'empty'} in {want}", facts.modality in want))
    if rule.body_parts is not None:
        want = [b.upper() for b in rule.body_parts]
        ok = not facts.body_part or not want or facts.body_part in want
        out.append((f"body part {facts.body_part or 'empty'} in {want}", ok))
    if rule.series_description is not None:
        ok = re.search(rule.series_description, facts.description, re.IGNORECASE) is not None
        out.append((f"series description {facts.description!r} matches /{rule.series_description}/", ok))
    if rule.slice_thickness_mm is not None:
        lo, hi = rule.slice_thickness_mm
        t = facts.slice_thickness
        out.append((f"slice thickness {t if t is not None else 'unknown'} mm in [{lo}, {hi}]",
                    t is not None and lo <= t <= hi))
    if rule.orientations is not None:
        out.append((f"orientation {facts.orientation or 'unknown'} in {rule.orientations}",
                    facts.orientation in rule.orientations))
    if rule.min_instances is not None:
        out.append((f"{facts.n_images} images >= {rule.min_instances}", facts.n_images >= rule.min_instances))
    if rule.max_instances is not None:
        out.append((f"{facts.n_images} images <= {rule.max_instances}", facts.n_images <= rule.max_instances))
    if rule.calling_ae_titles is not None:
        out.append((f"calling AE title {facts.calling_ae_title or 'unknown'} in {rule.calling_ae_titles}",
                    facts.calling_ae_title in rule.calling_ae_titles))
    if rule.sop_classes is not None:
        out.append((f"SOP class {facts.sop_class_uid or 'none'} in {rule.sop_classes}",
                    facts.sop_class_uid in rule.sop_classes))
    return out


def passes(rule: Rule, facts: SeriesFacts) -> str | None:
    """None when the series passes the rule's guard and conditions, else why not (the failed
    conditions, ``; ``-joined)."""
    excluded = [t for t in rule.exclude_image_types if t.upper() in facts.image_type.split("\\")]
    if excluded or facts.n_images == 0 and facts.n_localizers:
        return f"image type {facts.image_type or 'LOCALIZER'} excluded"
    checks = conditions(rule, facts)
    failed = [text for text, ok in checks if not ok]
    if not checks:
        return None
    if rule.combine == "all" and failed:
        return "; ".join(failed)
    if rule.combine == "any" and len(failed) == len(checks):
        return "none of: " + "; ".join(failed)
    return None


def decide(rule: Rule, facts: SeriesFacts, study: list[SeriesFacts]) -> str | None:
    """None when ``rule`` fires on ``facts``, else why not. ``study``: the facts of every
    series of the same study received so far (used by ``select = "thinnest"``)."""
    why_not = passes(rule, facts)
    if why_not or rule.select == "each":
        return why_not

    def key(f: SeriesFacts) -> tuple[float, int, str]:
        thickness = f.slice_thickness if f.slice_thickness is not None else float("inf")
        return (thickness, -f.n_images, f.series_uid)

    rivals = [f for f in study if f.series_uid != facts.series_uid and passes(rule, f) is None]
    better = [f for f in rivals if key(f) < key(facts)]
    if better:
        best = min(better, key=key)
        return (f"a thinner series of the study passes the rule: {best.series_uid} "
                f"({best.slice_thickness} mm, {best.n_images} images)")
    return None

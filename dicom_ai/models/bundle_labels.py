"""The labels step of the MONAI bundle import: ``channel_def`` names to coded manifest labels.

Output channel ``i`` of the network (``network_data_format.outputs.pred.channel_def``) becomes
label ``i`` of the manifest (channel 0 is the background of the argmax), one SEG segment each
(PS3.3 C.8.20.2.1 Segment Description). A channel named after a structure of
:data:`ORGAN_REGIONS` is coded with that structure's SNOMED CT concept from
:data:`dicom_ai.report.codes.STRUCTURES` (category ``SCT 123037004 "Anatomical Structure"``); a
name holding a lesion word (:data:`LESION_WORDS`) with the lesion's morphology (category ``SCT
49755003 "Morphologically Abnormal Structure"``); any other name ``SCT 85756007 "Tissue"``,
reported. Colours come from :data:`PALETTE`; the body region from the labels' organs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dicom_ai.models.bundle_config import Notes
from dicom_ai.models.bundle_mapping import NetworkFormat
from dicom_ai.package.manifest import Label
from dicom_ai.report.codes import (
    ANATOMICAL_STRUCTURE,
    LESIONS,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    STRUCTURES,
    TISSUE,
    manifest_code,
)

ANATOMY = manifest_code(ANATOMICAL_STRUCTURE)
ABNORMAL = manifest_code(MORPHOLOGICALLY_ABNORMAL_STRUCTURE)
GENERIC = manifest_code(TISSUE)

#: Structures named in MONAI Model Zoo bundles' ``channel_def`` (normalised names, keys of
#: :data:`dicom_ai.report.codes.STRUCTURES`) -> the manifest body region they lie in (None:
#: several regions).
ORGAN_REGIONS: dict[str, str | None] = {
    "spleen": "ABDOMEN",
    "liver": "ABDOMEN",
    "pancreas": "ABDOMEN",
    "kidney": "ABDOMEN",
    "left kidney": "ABDOMEN",
    "right kidney": "ABDOMEN",
    "gallbladder": "ABDOMEN",
    "stomach": "ABDOMEN",
    "duodenum": "ABDOMEN",
    "small intestine": "ABDOMEN",
    "colon": "ABDOMEN",
    "adrenal gland": "ABDOMEN",
    "portal vein": "ABDOMEN",
    "splenic vein": "ABDOMEN",
    "inferior vena cava": None,
    "aorta": None,
    "esophagus": None,
    "lung": "CHEST",
    "left lung": "CHEST",
    "right lung": "CHEST",
    "upper lobe of left lung": "CHEST",
    "lower lobe of left lung": "CHEST",
    "upper lobe of right lung": "CHEST",
    "middle lobe of right lung": "CHEST",
    "trachea": "CHEST",
    "heart": "CHEST",
    "urinary bladder": "PELVIS",
    "prostate": "PELVIS",
    "rectum": "PELVIS",
    "brain": "HEAD",
    "hippocampus": "HEAD",
    "spinal cord": None,
    "vertebra": None,
    "rib": None,
    "femur": None,
    "bone": None,
}

#: Other spellings of :data:`ORGAN_REGIONS` names seen in zoo bundles.
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

#: Words of a channel name that make it a lesion -> the key of its morphology in
#: :data:`dicom_ai.report.codes.LESIONS`.
LESION_WORDS = {
    "tumor": "neoplasm",
    "tumour": "neoplasm",
    "neoplasm": "neoplasm",
    "cancer": "neoplasm",
    "lesion": "lesion",
    "nodule": "nodule",
    "mass": "mass",
    "cyst": "cyst",
    "edema": "edema",
    "necrosis": "necrosis",
}

#: Segment colours (RGB 0-255), label i gets ``PALETTE[(i - 1) % len(PALETTE)]``.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 90, 60), (60, 160, 230), (90, 200, 90), (240, 200, 60), (170, 100, 220),
    (240, 140, 200), (60, 200, 190), (200, 130, 60), (140, 140, 240), (180, 220, 100),
    (220, 60, 120), (100, 120, 160),
)


def _normalise_name(name: str) -> str:
    n = re.sub(r"[\s_\-]+", " ", name.strip().lower())
    m = re.fullmatch(r"(.+) (left|right)", n)  # TotalSegmentator style: "kidney left"
    if m:
        n = f"{m.group(2)} {m.group(1)}"
    return ALIASES.get(n, n)


def code_label(index: int, name: str) -> tuple[Label, str | None, str | None]:
    """Code one output channel.

    Parameters
    ----------
    index:
        Channel index = label value (1-255).
    name:
        The channel's ``channel_def`` name (``"left lung"``, ``"kidney_left"``, ``"Liver Tumor"``).

    Returns
    -------
    tuple
        (label, body region or None, note or None when the name is in the table).
    """
    key = _normalise_name(name)
    color = PALETTE[(index - 1) % len(PALETTE)]
    if key in ORGAN_REGIONS:
        code = manifest_code(STRUCTURES[key])
        return Label(value=index, name=code.meaning, category=ANATOMY, type=code, color=color), ORGAN_REGIONS[key], None
    display = name.strip()[:1].upper() + name.strip()[1:]
    for word in re.split(r"\s+", key):
        if word in LESION_WORDS:
            code = manifest_code(LESIONS[LESION_WORDS[word]])
            note = (f"channel {index} {name!r}: coded as SCT {code.value} {code.meaning!r} (Morphologically Abnormal "
                    f"Structure); any organ in its name is not coded")
            return Label(value=index, name=display, category=ABNORMAL, type=code, color=color), None, note
    note = (f"channel {index} {name!r} has no SNOMED CT code in our table: coded as SCT "
            f"{GENERIC.value} {GENERIC.meaning!r}; edit manifest.json to code it properly")
    return Label(value=index, name=display or f"Label {index}", category=GENERIC, type=GENERIC,
                 color=color), None, note


@dataclass(frozen=True)
class Labels:
    """``labels``: one per output channel but the background; ``body_region``: the one region of
    their organs, else ``"WHOLEBODY"``."""

    labels: list[Label]
    body_region: str


def labels(bundle_dir: Path, fmt: NetworkFormat) -> tuple[Labels, Notes]:
    """The manifest labels of the output's channels (``num_channels``, else the highest
    ``channel_def`` key + 1) and the body region they give.

    Raises
    ------
    ValueError
        If ``channel_def`` keys are not channel numbers, or there are fewer than 2 or more
        than 256 channels.
    """
    notes = Notes()
    channels = fmt.pred.get("num_channels")
    channel_def = fmt.pred.get("channel_def") or {}
    try:
        defs = {int(k): str(v) for k, v in channel_def.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"outputs.{fmt.out_key}.channel_def {channel_def!r}: keys must be channel numbers") from exc
    n = int(channels) if isinstance(channels, int) else (max(defs) + 1 if defs else 0)
    if n < 2:
        raise ValueError(f"{bundle_dir}: output {fmt.out_key!r} has {n} channel(s); the node needs one channel per "
                         "class with channel 0 the background (argmax)")
    if n > 256:
        raise ValueError(f"{bundle_dir}: output {fmt.out_key!r} has {n} channels; a label mask holds at most 255 labels")
    if defs.get(0, "background").strip().lower() not in ("background", "bg", "other", "everything else"):
        notes.unmapped.append(f"channel 0 is {defs[0]!r}: the node treats channel 0 as background")
    coded: list[Label] = []
    regions: set[str] = set()
    for index in range(1, n):
        cname = defs.get(index)
        if cname is None:
            cname = f"label {index}"
            notes.unmapped.append(f"channel {index} has no channel_def entry: named {cname!r}")
        label, region, note = code_label(index, cname)
        coded.append(label)
        if region:
            regions.add(region)
        if note:
            notes.unmapped.append(note)
        else:
            notes.mapped.append(f"outputs.{fmt.out_key}.channel_def {index} {cname!r} -> label {index} "
                                f"{label.name!r}, SCT {label.type.value} {label.type.meaning!r}")
    if len(regions) == 1:
        body_region = next(iter(regions))
        notes.mapped.append(f"labels -> body_region {body_region}")
    else:
        body_region = "WHOLEBODY"
        why = f"its labels lie in {', '.join(sorted(regions))}" if regions else "no label names a known region"
        notes.unmapped.append(f"a bundle names no body region and {why}: body_region WHOLEBODY assumed (the model "
                              "is routed to series of any body part)")
    return Labels(coded, body_region), notes

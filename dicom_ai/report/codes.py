"""The coded concepts this node writes and matches, in one table built on pydicom's dictionary.

Every SNOMED CT (``SCT``) and DICOM (``DCM``) code that a manifest, a SEG segment (PS3.3
C.8.20.2.1: Segmented Property Category and Type, CID 7150 / CID 7151), an SR finding or the
reference matching of :mod:`dicom_ai.evaluate.reference` uses is taken from here. The codes
come from pydicom's DICOM code dictionary (:data:`pydicom.sr.codedict.codes`, PS3.16 Annex D
and the SNOMED CT concepts of PS3.16's context groups), e.g. ``codes.SCT.Lung`` is
(39607008, SCT, "Lung"). Two kinds of entries are written out instead, each with a comment:

* concepts the dictionary lacks (the lateral lungs and kidneys, two lung lobes, both lungs,
  both kidneys), given by their SNOMED CT concept id (International Edition, body structure
  hierarchy);
* concepts whose meaning in the dictionary differs from the one this node's packages were
  published with (``Anatomical Structure`` for 123037004, ``Urinary bladder``, ``Head
  structure``, ...): the dictionary's code value with the published meaning, so that existing
  manifests, SEGs and SRs keep their text.

:func:`manifest_code` turns a table entry into a manifest :class:`~dicom_ai.package.manifest.Code`;
:func:`sct_value` reads a SNOMED RT (``SRT``) code value as its SNOMED CT concept id.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_ai.package import manifest


def _published(code: Code, meaning: str) -> Code:
    """pydicom's ``code`` with the code meaning this node's packages carry."""
    return Code(code.value, code.scheme_designator, meaning)


# --- Segmented Property Categories (CID 7150) -------------------------------------------------

#: SNOMED CT 123037004, the Anatomical Structure category of earlier editions of CID 7150
#: (pydicom: ``codes.SCT.BodyStructure``, "Body structure (body structure)"); the category of
#: every organ label this node writes.
ANATOMICAL_STRUCTURE = _published(codes.SCT.BodyStructure, "Anatomical Structure")
#: (49755003, SCT, "Morphologically Abnormal Structure"): the category of lesion labels.
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = codes.SCT.MorphologicallyAbnormalStructure
#: (85756007, SCT, "Tissue"): category and type of a label no entry of :data:`STRUCTURES` codes.
TISSUE = codes.SCT.Tissue
#: Categories whose property type is an anatomic location (a finding site in the SR): Anatomical
#: Structure (123037004 and its successor 91723000) and Body Substance (91720002).
ANATOMIC_CATEGORIES: tuple[Code, ...] = (ANATOMICAL_STRUCTURE, codes.SCT.AnatomicalStructure, codes.SCT.BodySubstance)

# --- structures (CID 7151 Segmented Property Types: anatomical structures) ----------------------

#: Lower-case structure name -> SNOMED CT body structure.
STRUCTURES: dict[str, Code] = {
    "spleen": codes.SCT.Spleen,
    "liver": codes.SCT.Liver,
    "pancreas": codes.SCT.Pancreas,
    "kidney": codes.SCT.Kidney,
    "left kidney": Code("18639004", "SCT", "Left kidney"),  # SNOMED CT 18639004 |Left kidney structure|; not in pydicom
    "right kidney": Code("9846003", "SCT", "Right kidney"),  # SNOMED CT 9846003 |Right kidney structure|; not in pydicom
    "both kidneys": Code("17373004", "SCT", "Both kidneys"),  # SNOMED CT 17373004 |Both kidneys|; not in pydicom
    "gallbladder": codes.SCT.Gallbladder,
    "stomach": codes.SCT.Stomach,
    "duodenum": codes.SCT.Duodenum,
    "small intestine": codes.SCT.SmallIntestine,
    "colon": codes.SCT.Colon,
    "adrenal gland": codes.SCT.AdrenalGland,
    "portal vein": codes.SCT.PortalVein,
    "splenic vein": codes.SCT.SplenicVein,
    "inferior vena cava": codes.SCT.InferiorVenaCava,
    "aorta": codes.SCT.Aorta,
    "esophagus": codes.SCT.Esophagus,
    "lung": codes.SCT.Lung,
    "left lung": Code("44029006", "SCT", "Left lung"),  # SNOMED CT 44029006 |Left lung structure|; not in pydicom
    "right lung": Code("3341006", "SCT", "Right lung"),  # SNOMED CT 3341006 |Right lung structure|; not in pydicom
    "both lungs": Code("74101002", "SCT", "Both lungs"),  # SNOMED CT 74101002 |Both lungs|; not in pydicom
    "upper lobe of left lung": _published(codes.SCT.StructureOfUpperLobeOfLeftLung, "Upper lobe of left lung"),
    # SNOMED CT 41224006 |Structure of lower lobe of left lung|; not in pydicom
    "lower lobe of left lung": Code("41224006", "SCT", "Lower lobe of left lung"),
    # SNOMED CT 42400003 |Structure of upper lobe of right lung|; not in pydicom
    "upper lobe of right lung": Code("42400003", "SCT", "Upper lobe of right lung"),
    "middle lobe of right lung": codes.SCT.MiddleLobeOfRightLung,
    "trachea": codes.SCT.Trachea,
    "heart": codes.SCT.Heart,
    "urinary bladder": _published(codes.SCT.Bladder, "Urinary bladder"),
    "prostate": codes.SCT.Prostate,
    "rectum": codes.SCT.Rectum,
    "brain": codes.SCT.Brain,
    "hippocampus": codes.SCT.Hippocampus,
    "spinal cord": codes.SCT.SpinalCord,
    "vertebra": codes.SCT.Vertebra,
    "rib": codes.SCT.Rib,
    "femur": codes.SCT.Femur,
    "bone": codes.SCT.Bone,
    "breast": codes.SCT.Breast,
    "left breast": codes.SCT.LeftBreast,
    "right breast": codes.SCT.RightBreast,
}

#: Body regions (the classes of the region classifier, CID 4031 Common Anatomic Regions).
REGIONS: dict[str, Code] = {
    "head": _published(codes.SCT.Head, "Head structure"),
    "chest": _published(codes.SCT.ThoracicStructure, "Thoracic structure"),
    "abdomen": _published(codes.SCT.AbdominalStructure, "Abdominal structure"),
}

# --- morphology (CID 7151 Segmented Property Types: abnormal structures) ------------------------

#: Lesion word -> SNOMED CT morphologic abnormality (category Morphologically Abnormal Structure).
LESIONS: dict[str, Code] = {
    "neoplasm": codes.SCT.Neoplasm,
    "lesion": codes.SCT.Lesion,
    "nodule": codes.SCT.Nodule,
    "mass": codes.SCT.Mass,
    "cyst": codes.SCT.Cyst,
    "edema": codes.SCT.Edema,
    "necrosis": codes.SCT.Necrosis,
}

# --- laterality (CID 244 Laterality) ------------------------------------------------------------

#: Side -> SNOMED CT laterality qualifier (SNOMED RT G-A101 / G-A100 / G-A102 translate to them).
LATERALITY: dict[str, Code] = {
    "left": codes.SCT.Left,
    "right": codes.SCT.Right,
    "both": codes.SCT.Bilateral,
}
#: (paired structure, side) -> the structure of that side, by :data:`STRUCTURES` names.
SIDES: dict[tuple[str, str], str] = {
    ("lung", "left"): "left lung", ("lung", "right"): "right lung", ("lung", "both"): "both lungs",
    ("kidney", "left"): "left kidney", ("kidney", "right"): "right kidney", ("kidney", "both"): "both kidneys",
    ("breast", "left"): "left breast", ("breast", "right"): "right breast",
}

# --- DICOM concepts ------------------------------------------------------------------------------

#: (121071, DCM, "Finding"): the concept of a classification's qualitative evaluation.
FINDING = codes.DCM.Finding
#: (123014, DCM, "Target Region"): the concept of the region classifier's finding.
TARGET_REGION = codes.DCM.TargetRegion


def manifest_code(code: Code) -> manifest.Code:
    """A table entry as a manifest code (value, scheme, meaning; PS3.3 Table 8.8-1).

    Parameters
    ----------
    code: pydicom.sr.coding.Code
        An entry of this table (or any pydicom code).

    Returns
    -------
    dicom_ai.package.manifest.Code
    """
    return manifest.Code(value=code.value, scheme=code.scheme_designator, meaning=code.meaning)


def sct_value(code_value: str) -> str:
    """SNOMED CT form of a code value: a SNOMED RT (``SRT``) code (``T-62000``) becomes its
    SNOMED CT concept id (``10200004``) through pydicom's SNOMED RT to SNOMED CT table (the
    mapping PS3.16 Annex O gives for codes of earlier editions); other values are returned
    stripped and unchanged.

    Parameters
    ----------
    code_value: str
        Code Value (0008,0100) of an SCT or SRT code.

    Returns
    -------
    str
    """
    code_value = str(code_value).strip()
    try:
        from pydicom.sr._snomed_dict import mapping as snomed
    except ImportError:  # pragma: no cover - private table moved
        return code_value
    return snomed.get("SRT", {}).get(code_value, code_value)

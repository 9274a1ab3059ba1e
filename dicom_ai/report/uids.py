"""Deterministic UIDs for result objects (SEG, SR) and their tracking identifiers.

Re-running the same model version on the same source series must *replace* its earlier
results in the PACS, not add duplicates; so the Series Instance UID and SOP Instance UID of a
result are derived from what the result depends on, not drawn at random
(PS3.5 Chapter 9 and Annex B: a UID derived from a hash under an organisational root).

* :func:`result_series_uid` depends on the source series, the model (name and version) and the
  kind of object (``"SEG"``, ``"SR"``, ...). A re-run after late instances arrived lands in the
  *same* result series.
* :func:`result_instance_uid` additionally depends on the set of source SOP Instance UIDs
  (order does not matter). A re-run on the same instances yields the same SOP Instance UID
  (the receiving archive replaces the object); a re-run after late instances arrived yields a
  *new* SOP Instance UID in the same series.

The inputs are serialised unambiguously (JSON array) before hashing, because
:func:`pydicom.uid.generate_uid` concatenates its ``entropy_srcs`` without a separator
(``["ab", "c"]`` and ``["a", "bc"]`` would otherwise collide).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

#: Bump only if the derivation itself changes; every UID changes with it.
_SCHEME = "dicom-ai/result-uid/1"


def derive(scheme: str, parts: list[str], prefix: str = PYDICOM_ROOT_UID) -> UID:
    """A UID under ``prefix`` that depends only on ``scheme`` (a name and version of the
    derivation: another derivation never yields the same UID) and ``parts``, serialised
    unambiguously (JSON) before hashing (PS3.5 Annex B)."""
    return generate_uid(prefix=prefix, entropy_srcs=[json.dumps([scheme, *parts])])


def _derive(parts: list[str], prefix: str) -> UID:
    return derive(_SCHEME, parts, prefix)


def _check_kind(kind: str) -> str:
    if not kind or not kind.strip():
        raise ValueError("kind must be a non-empty string such as 'SEG' or 'SR'")
    return kind.strip().upper()


def result_series_uid(
    source_series_uid: str,
    model_name: str,
    model_version: str,
    kind: str,
    *,
    prefix: str = PYDICOM_ROOT_UID,
) -> UID:
    """Series Instance UID of a result series (PS3.3 C.7.3.1).

    Parameters
    ----------
    source_series_uid: str
        Series Instance UID of the source (input) series.
    model_name: str
        Name of the model (``ModelManifest.name``).
    model_version: str
        Version of the model (``ModelManifest.version``).
    kind: str
        Kind of result object, e.g. ``"SEG"`` or ``"SR"`` (case-insensitive); one series per kind.
    prefix: str, optional
        UID root (at most 54 characters, ending in ``"."``); defaults to pydicom's root.

    Returns
    -------
    pydicom.uid.UID
        A UID of at most 64 characters, the same for the same arguments.

    Raises
    ------
    ValueError
        If ``kind`` is empty or ``prefix`` is not a valid UID prefix.
    """
    return _derive(
        ["series", str(source_series_uid), model_name, model_version, _check_kind(kind)], prefix
    )


def result_instance_uid(
    source_series_uid: str,
    model_name: str,
    model_version: str,
    kind: str,
    source_sop_instance_uids: Iterable[str],
    *,
    variant: str = "",
    prefix: str = PYDICOM_ROOT_UID,
) -> UID:
    """SOP Instance UID of a result object (PS3.3 C.12.1).

    Parameters
    ----------
    source_series_uid: str
        Series Instance UID of the source series.
    model_name: str
        Name of the model.
    model_version: str
        Version of the model.
    kind: str
        Kind of result object, e.g. ``"SEG"`` or ``"SR"`` (case-insensitive).
    source_sop_instance_uids: Iterable[str]
        SOP Instance UIDs of the source instances the result was computed from. Order and
        repetitions do not matter (the set is sorted before hashing).
    variant: str, optional
        Distinguishes encodings of the same result that differ in content (e.g. a SEG with and
        without its empty frames): one SOP Instance UID must never name two different objects.
        The empty default leaves the UID as without it.
    prefix: str, optional
        UID root (at most 54 characters, ending in ``"."``); defaults to pydicom's root.

    Returns
    -------
    pydicom.uid.UID
        A UID of at most 64 characters: the same for the same model version and the same set of
        source instances, a different one when an instance is added or removed.

    Raises
    ------
    ValueError
        If ``kind`` is empty, ``source_sop_instance_uids`` is empty or ``prefix`` is invalid.
    """
    instances = sorted({str(uid) for uid in source_sop_instance_uids})
    if not instances:
        raise ValueError("source_sop_instance_uids must not be empty")
    kind_part = _check_kind(kind) if not variant else f"{_check_kind(kind)}#{variant}"
    return _derive(
        ["instance", str(source_series_uid), model_name, model_version, kind_part, *instances],
        prefix,
    )


def variant_of(*parts: str, precision: str = "float32") -> str:
    """The ``variant`` of :func:`result_instance_uid` for a result computed in ``precision``
    (:attr:`dicom_ai.infer.runtime.LoadedModel.precision`) with the other distinguishing
    ``parts``: the non-empty parts joined by ``"+"``, and the precision unless it is
    ``"float32"``. A float32 result's UID is thus the one of its parts alone, and a bfloat16
    result, whose voxels may differ from the float32 one's, never shares its UID."""
    kept = [p for p in parts if p]
    if precision != "float32":
        kept.append(precision)
    return "+".join(kept)


def tracking_uid(
    source_series_uid: str,
    model_name: str,
    model_version: str,
    label_value: int,
    *,
    region: str = "",
    prefix: str = PYDICOM_ROOT_UID,
) -> UID:
    """Tracking UID of one segmented finding (PS3.3 C.8.20.4 Tracking UID; PS3.16 TID 4108).

    The same UID is written into the SEG segment and into the SR measurement group of that
    segment, so the two can be linked; it is stable over re-runs of the same model version.

    Parameters
    ----------
    source_series_uid, model_name, model_version: str
        The source series and the model, as for :func:`result_instance_uid`.
    label_value: int
        Value of the label in the label mask (``Label.value``).
    region: str, optional
        Empty for the segment itself; a name (e.g. ``"largest-slice"``) for another tracked
        finding derived from it, such as its outline on one slice, which gets a UID of its own.
    prefix: str, optional
        UID root; defaults to pydicom's root.

    Returns
    -------
    pydicom.uid.UID
        A UID of at most 64 characters.
    """
    parts = ["tracking", str(source_series_uid), model_name, model_version, str(int(label_value))]
    return _derive(parts + [region] if region else parts, prefix)


def device_uid(node_name: str, *, prefix: str = PYDICOM_ROOT_UID) -> UID:
    """Device Observer UID of this node (PS3.16 TID 1004, EV (121012, DCM)).

    Parameters
    ----------
    node_name: str
        A name that identifies this node (e.g. its AE title or host name).
    prefix: str, optional
        UID root; defaults to pydicom's root.

    Returns
    -------
    pydicom.uid.UID
        The same UID for the same node name.
    """
    return _derive(["device", node_name], prefix)


def model_device_uid(model_name: str, model_version: str, weights_sha256: str, *,
                     prefix: str = PYDICOM_ROOT_UID) -> UID:
    """Device UID (0018,1002) of a model: the algorithm as a device (IHE AI Results, the
    Processing Algorithm item of the Contributing Equipment Sequence; PS3.16 TID 1004 Device
    Observer UID).

    Derived from the model's name, version and the SHA-256 of its weights, so retrained weights
    get a new UID even under the same name and version, and the same package always the same.

    Parameters
    ----------
    model_name, model_version:
        As in the package manifest.
    weights_sha256:
        Hex SHA-256 of the package's weights (the manifest's ``sha256``; may be empty for a
        package without a recorded checksum, which then depends on name and version only).
    prefix: str, optional
        UID root; defaults to pydicom's root.
    """
    return _derive(["model-device", model_name, model_version, weights_sha256.lower()], prefix)

"""C-STORE SCU: send files to a DICOM AE, proposing only what is being sent.

Used by the outbox (results to PACS) and by ``dicom-ai send``. For each SOP class in the files
one presentation context is proposed with the file's own transfer syntax plus Explicit and
Implicit VR Little Endian; a compressed file whose syntax the peer did not accept is decoded
and sent uncompressed (PS3.4 B.4.1, PS3.5 10).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS, code_to_category

from dicom_ai.dicom.status import DimseStatus

log = logging.getLogger(__name__)

# send files as stored: the request's UIDs come from the file meta and the data set is streamed
# from the file without decoding (pynetdicom >= 2.1)
_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: at most 128 presentation contexts per association
CONTEXTS_PER_CLASS = 3  # the file's syntax, Explicit and Implicit VR LE: each its own context


class AssociationFailed(ConnectionError):
    """The association could not be established (refused, rejected or timed out)."""


@dataclass
class SendOutcome:
    """Result of one C-STORE: ``status`` is the DIMSE status, or None if nothing came back."""

    path: Path
    status: int | None
    message: str = ""

    @property
    def ok(self) -> bool:
        """0x0000 and the 0xB000-range warnings count as stored (PS3.4 B.2.3)."""
        return self.status is not None and (self.status == DimseStatus.SUCCESS or (self.status & 0xF000) == 0xB000)


def _headers(paths: list[Path]) -> list[tuple[Path, str, str]]:
    out = []
    for p in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            ts = str(ds.file_meta.TransferSyntaxUID)
            sop_class = str(ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID)
        except Exception as exc:  # noqa: BLE001
            log.warning("not sent: %s is not a readable DICOM file: %s", p, exc)
            continue
        out.append((p, sop_class, ts))
    return out


def _associate(ae: AE, host: str, port: int, aec: str) -> Any:
    """An established association, or :class:`AssociationFailed` saying why not."""
    assoc = ae.associate(host, port, ae_title=aec)
    if not assoc.is_established:
        why = "aborted or no answer"
        if assoc.is_rejected and assoc.acceptor.primitive is not None:
            rj = assoc.acceptor.primitive
            why = f"rejected ({rj.result_str}, {rj.source_str}: {rj.reason_str})"
        raise AssociationFailed(f"association with {aec}@{host}:{port} not established: {why}")
    return assoc


def has_instance(
    host: str, port: int, *, aet: str, aec: str, study_uid: str, series_uid: str, sop_uid: str,
    timeout: float = 10.0,
) -> bool | None:
    """Whether the peer holds an instance: a Study Root C-FIND at IMAGE level (PS3.4 C.4.1).

    Returns True or False, or None when the peer does not answer C-FIND for it (no Q/R SCP,
    association refused, or a failure status). Never raises.
    """
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study_uid, series_uid, sop_uid
    try:
        assoc = _associate(ae, host, port, aec)
    except AssociationFailed:
        return None
    found, failed = False, False
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status or int(status.Status) not in (DimseStatus.SUCCESS, DimseStatus.PENDING, DimseStatus.PENDING_WARNING):
                failed = True
            elif identifier is not None and str(identifier.get("SOPInstanceUID", "")) == sop_uid:
                found = True
    finally:
        if assoc.is_established:
            assoc.release()
    return None if failed and not found else found


def echo(host: str, port: int, *, aet: str, aec: str, timeout: float = 10.0) -> int:
    """C-ECHO; returns the DIMSE status. Raises :class:`AssociationFailed`."""
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = _associate(ae, host, port, aec)
    try:
        status = assoc.send_c_echo()
        if not status:
            raise AssociationFailed("no C-ECHO response")
        return int(status.Status)
    finally:
        assoc.release()


def store_files(
    paths: list[Path],
    host: str,
    port: int,
    *,
    aet: str,
    aec: str,
    timeout: float = 30.0,
    on_sent: Callable[[SendOutcome], None] | None = None,
) -> list[SendOutcome]:
    """Send DICOM files by C-STORE over one association per 128 SOP class/syntax pairs.

    Raises
    ------
    AssociationFailed
        If an association is refused or cannot be opened; outcomes already obtained are lost
        to the caller only in that case (the outbox retries the whole batch).
    """
    items = _headers(paths)
    outcomes: list[SendOutcome] = []
    # one association per chunk of distinct SOP classes
    classes = sorted({sop for _, sop, _ in items})
    per_assoc = MAX_CONTEXTS // CONTEXTS_PER_CLASS
    for start in range(0, len(classes), per_assoc):
        chunk = set(classes[start : start + per_assoc])
        batch = [it for it in items if it[1] in chunk]
        outcomes.extend(_store_batch(batch, host, port, aet, aec, timeout, on_sent))
    return outcomes


def _store_batch(batch, host, port, aet, aec, timeout, on_sent) -> list[SendOutcome]:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # one context per (SOP class, transfer syntax): the peer then accepts each syntax it can,
    # and every file goes as stored when its own syntax is among them
    pairs: dict[tuple[str, str], None] = {}
    for _, sop, ts in batch:
        for t in (ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            pairs[(sop, t)] = None
    for sop, t in pairs:
        ae.add_requested_context(sop, t)
    assoc = _associate(ae, host, port, aec)
    outcomes = []
    try:
        for path, sop, ts in batch:
            accepted = {
                cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == sop
            }
            outcome = _store_one(assoc, path, sop, ts, accepted)
            outcomes.append(outcome)
            if on_sent:
                on_sent(outcome)
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def _store_one(assoc, path: Path, sop: str, ts: str, accepted: set[str]) -> SendOutcome:
    if not accepted:
        return SendOutcome(path, None, f"peer accepted no context for {UID(sop).name}")
    try:
        if ts in accepted:
            status = assoc.send_c_store(path)  # sent as stored, no decode
        else:
            # transcode: decompress, then the uncompressed syntax the peer took
            ds = pydicom.dcmread(path)
            if UID(ts).is_compressed:
                ds.decompress()
            target = UID(ExplicitVRLittleEndian if ExplicitVRLittleEndian in accepted else sorted(accepted)[0])
            if target.is_compressed:
                return SendOutcome(path, None, f"peer accepts {UID(sop).name} only as {target.name}")
            ds.file_meta.TransferSyntaxUID = target
            ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian)
            status = assoc.send_c_store(ds)
    except Exception as exc:  # noqa: BLE001
        return SendOutcome(path, None, f"{type(exc).__name__}: {exc}")
    if not status or "Status" not in status:
        return SendOutcome(path, None, "no response (association aborted or timed out)")
    code = int(status.Status)
    return SendOutcome(path, code, status_meaning(code))


def status_meaning(code: int) -> str:
    """``0xA700 Refused: Out of Resources``: a C-STORE status with its meaning (PS3.4 B.2.3,
    PS3.7 C)."""
    category, text = STORAGE_SERVICE_CLASS_STATUS.get(code) or GENERAL_STATUS.get(code) or (
        code_to_category(code), ""
    )
    return f"0x{code:04X} {text or category}".strip()

"""The Application Entity: C-ECHO and C-STORE SCP with a peer policy.

The C-STORE handler does the minimum, so a modality waits only for its data set to be stored:
validate, write the data set as received (no re-encoding) durably, index it, answer. Status
codes (:class:`dicom_ai.dicom.status.DimseStatus`) follow PS3.4 Annex B.2.3 and PS3.7 C: 0x0000
success, 0xA700 out of resources, 0xA900 data set does not match SOP class, 0xC000-range cannot
understand.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast
from weakref import WeakKeyDictionary

import pydicom
from pydicom import uid
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.index import InstanceMeta, count, instance_meta, mark_aborted, mark_released, store_instance
from dicom_ai.cache.store import FileStore, InvalidUID, Pending
from dicom_ai.config import Settings
from dicom_ai.dicom.encoding import PREAMBLE, file_meta_bytes
from dicom_ai.dicom.header import text_value
from dicom_ai.dicom.status import DimseStatus
from dicom_ai.receive.transport import (
    AssociationGate,
    AssociationServer,
    AssociationSlots,
    _use_low_latency_dul,
    effective_pdu_limit,
)
from dicom_ai.receive.validate import (
    Refusal,
    check_pixel_data,
    read_received,
)

log = logging.getLogger(__name__)


#: Transfer syntaxes accepted for storage (PS3.5 Annex A, 10): uncompressed, deflated, RLE,
#: JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K.
ACCEPTED_TRANSFER_SYNTAXES = [
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.RLELossless,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
]


def image_storage_sop_classes() -> list[str]:
    """The image storage SOP classes (PS3.4 B.5) this node accepts."""
    out: list[str] = []
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None  # every storage context names its SOP class
        name = UID(cx.abstract_syntax).name
        if "Image" in name and "Storage" in name:
            out.append(cx.abstract_syntax)
    return out



class StorageSCP:
    """C-ECHO/C-STORE SCP bound to one :class:`FileStore` and index."""

    def __init__(self, settings: Settings, store: FileStore, sessions: sessionmaker,
                 on_release: Callable[[], None] | None = None) -> None:
        """``on_release`` is called after an A-RELEASE that ended the transfer of a series has
        been recorded (the node then looks at the series at once, not at its next tick)."""
        self.settings = settings
        self.on_release = on_release
        self.store = store
        self.sessions = sessions
        self.ae = AE(ae_title=settings.node.ae_title)
        # the Maximum Length Received offered (PS3.8 D.1) and enforced (max_pdu 0: the hard cap)
        self.ae.maximum_pdu_size = effective_pdu_limit(settings.node.max_pdu)
        self.ae.acse_timeout = settings.node.acse_timeout
        self.ae.dimse_timeout = settings.node.dimse_timeout
        self.ae.network_timeout = settings.node.network_timeout
        self.ae.dicom_ai_max_data_set = settings.node.max_instance_mb * 1024 * 1024  # type: ignore[attr-defined]  # read by WaitingDIMSE
        self.ae.maximum_associations = settings.node.max_associations  # AssociationSlots rules
        self.ae.require_called_aet = settings.node.require_called_ae_title
        self.ae.add_supported_context(Verification)
        for sop_class in image_storage_sop_classes():
            self.ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
        self.server: Any = None
        # per open association: its id (kept on each instance row) and the series it brought
        self._associations: WeakKeyDictionary[Any, tuple[str, set[str]]] = WeakKeyDictionary()
        self._ids = itertools.count(1)

    # -- association policy -------------------------------------------------------------
    def _refusal(self, calling: str, called: str, address: str) -> tuple[int, str] | None:
        """Why an association from ``calling`` at ``address`` to ``called`` is refused: the
        A-ASSOCIATE-RJ reason (result permanent, source service user; PS3.8 9.3.4: 3 calling,
        7 called AE title not recognised) and a line for the log; None when it is allowed.
        The gate (:class:`AssociationGate`) asks before an association thread exists."""
        if self.settings.peer_for(calling, address) is None:
            return 0x03, f"calling AE title {calling!r} from {address} is not in [[peers]]"
        if self.settings.node.require_called_ae_title and called != self.settings.node.ae_title:
            return 0x07, f"called AE title {called!r} (from {calling!r} at {address}) is not ours"
        return None

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        assert primitive is not None  # EVT_REQUESTED: the A-ASSOCIATE-RQ has arrived
        calling = primitive.calling_ae_title.strip()
        called = primitive.called_ae_title.strip()
        address = assoc.requestor.address
        refusal = self._refusal(calling, called, address)  # the gate asked already; again here
        if refusal is None:
            self._associations[assoc] = (f"{os.getpid()}-{next(self._ids)}", set())
            log.info("association from %s at %s accepted", calling, address)
            self._count("associations_accepted")
            return
        reason, why = refusal
        log.warning("association refused: %s", why)
        self._count("associations_refused")
        assoc.acse.send_reject(0x01, 0x01, reason)
        assoc.is_rejected = True
        assoc.kill()

    # -- DIMSE ----------------------------------------------------------------------------
    def _on_echo(self, event: evt.Event) -> int:
        return DimseStatus.SUCCESS

    def _on_store(self, event: evt.Event) -> int | tuple[int, Any]:
        calling = event.assoc.requestor.ae_title.strip()
        rq = cast(C_STORE, event.request)
        data: Any = rq.DataSet  # a BoundedBuffer (see WaitingDIMSE) or pynetdicom's BytesIO
        limit = self.settings.node.max_instance_mb * 1024 * 1024
        if getattr(data, "overflowed", False):  # see BoundedBuffer
            log.warning("C-STORE %s from %s refused (0xA700): its data set of %d bytes exceeds "
                        "[node] max_instance_mb = %d", rq.AffectedSOPInstanceUID, calling,
                        data.received, self.settings.node.max_instance_mb)
            return DimseStatus.OUT_OF_RESOURCES
        try:
            # the file as Event.encoded_dataset(include_meta=True) makes it (PS3.10 7.1)
            stream = data.getbuffer()
            meta = file_meta_bytes(str(rq.AffectedSOPClassUID or ""), str(rq.AffectedSOPInstanceUID or ""),
                                   event.context.transfer_syntax)
            raw = b"".join((PREAMBLE, meta, stream))
        except Exception as exc:  # noqa: BLE001 - any decoding fault is the sender's
            log.warning("C-STORE from %s refused (0xC000): cannot read data set: %s", calling, exc)
            return DimseStatus.CANNOT_UNDERSTAND
        reserve = self.settings.node.min_free_mb * 1024 * 1024
        if self.store.free_bytes() - len(raw) < reserve:
            log.error(
                "C-STORE %s refused (0xA700): less than [node] min_free_mb = %d MiB free in %s",
                rq.AffectedSOPInstanceUID,
                self.settings.node.min_free_mb,
                self.store.root,
            )
            return DimseStatus.OUT_OF_RESOURCES
        # the file is written under a temporary name and fsync'd on another thread while the
        # data set is parsed and checked; store_instance waits for that fsync and renames it
        # into place, or it is removed here
        try:
            pending = self.store.write_ahead(raw)
        except OSError as exc:
            log.error("C-STORE %s failed (0xA700): %s", rq.AffectedSOPInstanceUID, exc)
            return DimseStatus.OUT_OF_RESOURCES
        try:
            return self._check_and_store(raw, stream, event, rq, calling, limit, pending)
        finally:
            pending.discard()

    def _check_and_store(self, raw: bytes, stream: Any, event: evt.Event, rq: C_STORE,
                         calling: str, limit: int, pending: Pending) -> int:
        """Parse and check a received data set (``raw``: as a file; ``stream``: as received),
        then store it (:func:`store_instance`); returns the DIMSE status of the outcome."""
        try:
            transfer_syntax = event.context.transfer_syntax
            ds = read_received(stream, transfer_syntax, limit)
            association_id, series_seen = self._associations.get(event.assoc, ("", set()))
            meta = self._meta(ds, rq, transfer_syntax, association_id)
            check_pixel_data(ds, transfer_syntax, limit)
        except Refusal as refusal:
            log.warning("C-STORE from %s refused (0x%04X): %s", calling, refusal.status, refusal)
            return refusal.status
        except Exception as exc:  # noqa: BLE001
            log.warning("C-STORE from %s refused (0xC000): cannot parse data set: %s", calling, exc)
            return DimseStatus.CANNOT_UNDERSTAND
        relpath = self.store.instance_relpath(meta.study_uid, meta.series_uid, meta.sop_instance_uid)
        # identity checks, write and index (dicom_ai.cache.index): an instance whose patient
        # differs from its study's, whose series is stored under another study, or whose SOP
        # Instance UID is stored in another series is refused with 0xA900 (PS3.4 B.2.3) and
        # nothing stored changes; a re-sent UID in the same series follows [node] resent_instance
        try:
            stored = store_instance(self.sessions, self.store, meta, relpath, raw, calling,
                                    self.settings.node.resent_instance, pending)
        except OSError as exc:
            log.error("C-STORE %s failed (0xA700): %s", meta.sop_instance_uid, exc)
            return DimseStatus.OUT_OF_RESOURCES
        except Exception:
            log.exception("C-STORE %s failed (0x0110): could not index", meta.sop_instance_uid)
            return DimseStatus.PROCESSING_FAILURE
        conflict = stored.conflict  # its detail names attributes, never their values (no PHI)
        if stored.outcome == "refused":
            assert conflict is not None  # a refusal always names its conflict
            log.warning("C-STORE %s of series %s from %s refused (0x%04X): %s conflict: %s",
                        meta.sop_instance_uid, meta.series_uid, calling, DimseStatus.DATASET_MISMATCH,
                        conflict.kind, conflict.detail)
            return DimseStatus.DATASET_MISMATCH
        if stored.outcome in ("kept_first", "replaced"):
            assert conflict is not None  # so do these
            log.warning("C-STORE %s of series %s from %s: %s", meta.sop_instance_uid,
                        meta.series_uid, calling, conflict.detail)
        series_seen.add(meta.series_uid)
        return DimseStatus.SUCCESS

    def _count(self, name: str) -> None:
        try:
            count(self.sessions, name)
        except Exception:  # noqa: BLE001 - a metric must never refuse an association
            log.exception("counter %s not updated", name)

    def _on_released(self, event: evt.Event) -> None:
        """A-RELEASE: this association's series may now be whole (the ``association_release`` signal)."""
        self._count("associations_ended")
        association_id, series_seen = self._associations.pop(event.assoc, ("", set()))
        if series_seen:
            try:
                mark_released(self.sessions, association_id, sorted(series_seen))
            except Exception:  # noqa: BLE001 - the idle timer still completes the series
                log.exception("could not record the release of association %s", association_id)
                return
            if self.on_release is not None:
                self.on_release()

    def _on_aborted(self, event: evt.Event) -> None:
        """A-ABORT: this association's series are no longer being sent (the idle timer may
        complete them); an abort says nothing about completeness."""
        ended = self._associations.pop(event.assoc, None)
        if ended is not None:  # an accepted one
            self._count("associations_ended")
            association_id, series_seen = ended
            if series_seen:
                try:
                    mark_aborted(self.sessions, association_id, sorted(series_seen))
                except Exception:  # noqa: BLE001 - the hold on the idle timer is bounded anyway
                    log.exception("could not record the abort of association %s", association_id)

    def _meta(
        self, ds: pydicom.Dataset, rq: Any, transfer_syntax: str, association: str = ""
    ) -> InstanceMeta:
        """The :class:`InstanceMeta` of a received data set (:func:`instance_meta`: patient,
        study, series and instance attributes), once its SOP Class and Instance UIDs are those
        of the request.

        Raises
        ------
        Refusal
            0xA900 (PS3.4 B.2.3) if the data set's SOP Class or Instance UID differs from the
            request's, or a Study, Series or SOP Instance UID is not a valid UID (PS3.5 9.1).
        """
        sop_class = text_value(ds, "SOPClassUID").strip()
        sop_inst = text_value(ds, "SOPInstanceUID").strip()
        if sop_class != str(rq.AffectedSOPClassUID) or sop_inst != str(rq.AffectedSOPInstanceUID):
            raise Refusal(
                DimseStatus.DATASET_MISMATCH,
                f"data set SOP Class/Instance UID ({sop_class or 'empty'}, {sop_inst or 'empty'}) "
                f"does not match the request ({rq.AffectedSOPClassUID}, "
                f"{rq.AffectedSOPInstanceUID})",
            )
        try:
            return instance_meta(ds, transfer_syntax, association)
        except InvalidUID as exc:
            raise Refusal(DimseStatus.DATASET_MISMATCH, str(exc)) from None

    # -- lifecycle -------------------------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext | None:
        """The server TLS context of ``[tls]``, or None when TLS is off.

        Raises
        ------
        OSError, ssl.SSLError
            If a certificate, key or CA file cannot be read.
        """
        tls = self.settings.tls
        if not tls.enabled:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195
        assert tls.certificate is not None  # TLSSettings refuses enabled without one
        ctx.load_cert_chain(tls.certificate, tls.private_key)
        if tls.ca_certificates:
            ctx.load_verify_locations(cafile=tls.ca_certificates)
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_peer_certificate else ssl.CERT_OPTIONAL
        return ctx

    def start(self, listening_socket: socket.socket | None = None,
              slots: AssociationSlots | None = None) -> None:
        """Start serving in background threads, on ``listening_socket`` (shared with other
        receiver processes, see :func:`open_listener`) or else on a socket of its own bound to
        ``[node] bind_address:port``; associations count in ``slots`` (the node's, shared with
        the other receiver processes) or else in slots of this SCP's own.

        Raises
        ------
        OSError
            If the port cannot be bound, or a TLS certificate, key or CA file cannot be read.
        """
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, _use_low_latency_dul),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        node = self.settings.node
        context = self.ssl_context()
        self.slots = slots or AssociationSlots(node.max_associations, node.max_associations_per_address)
        self.server = self.ae.make_server(
            (node.bind_address, node.port),
            evt_handlers=handlers,
            ssl_context=context,
            server_class=AssociationServer,
            listening_socket=listening_socket,
        )
        self.server.gate = AssociationGate(
            self.server.socket,
            request_timeout=node.association_request_timeout,
            slots=self.slots,
            policy=self._refusal,
            admit=self.server.admit,
            ssl_context=context,
            count=self._count_later,
        )
        self._later: queue.Queue[str | None] = queue.Queue(maxsize=1000)
        self._counter = threading.Thread(target=self._counting, name="association-counters", daemon=True)
        self._counter.start()
        threading.Thread(
            target=self.server.serve_forever, name="association-server", daemon=True
        ).start()
        self.ae._servers.append(self.server)
        log.info(
            "AE %s listening on %s:%d%s (%d peers allowed; at most %d associations, %d per "
            "address; max PDU %d bytes)",
            node.ae_title,
            node.bind_address,
            node.port,
            " with TLS" if context else "",
            len(self.settings.peers),
            node.max_associations,
            node.max_associations_per_address,
            self.ae.maximum_pdu_size,
        )

    def _count_later(self, name: str) -> None:
        """Count ``name`` without waiting for the index (for the gate's thread): queued for the
        counting thread; dropped when 1000 are waiting already (a flood of refusals)."""
        try:
            self._later.put_nowait(name)
        except queue.Full:
            pass

    def _counting(self) -> None:
        while (name := self._later.get()) is not None:
            self._count(name)

    def stop(self) -> None:
        """Stop accepting, and end open associations within a bounded time whatever their peers
        do (:meth:`AssociationServer.shutdown`; each write is atomic, nothing is half-done).

        pynetdicom's ``AE.shutdown`` is not used: its abort waits, without a limit, for the
        association's reader, which a peer that stopped half-way through a PDU holds."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
            try:
                self._later.put(None, timeout=1.0)
            except queue.Full:
                pass
            self._counter.join(2.0)
        self.store.close_spares()
        self.ae._servers = []

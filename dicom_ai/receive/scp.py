"""The Application Entity: C-ECHO and C-STORE SCP with a peer policy.

The C-STORE handler does the minimum (GUIDE §1): validate, write the data set as received
(no re-encoding) durably, index it, answer. Status codes follow PS3.4 Annex B.2.3 and PS3.7 C:
0x0000 success, 0xA700 out of resources, 0xA900 data set does not match SOP class,
0xC000-range cannot understand.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import ssl
import threading
import time
from io import BytesIO
from typing import Any
from weakref import WeakKeyDictionary

import pydicom
from pydicom import uid
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pynetdicom.sop_class import Verification
from pynetdicom.presentation import AllStoragePresentationContexts
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.index import InstanceMeta, count, instance_meta, mark_released, store_instance
from dicom_ai.cache.store import FileStore, InvalidUID
from dicom_ai.config import Settings
from dicom_ai.receive.validate import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    Refusal,
    check_pixel_data,
    read_received,
)
from dicom_ai.receive.transport import (
    AssociationGate,
    AssociationSlots,
    GuardedSocket,
    effective_pdu_limit,
    read_pdu,
)

log = logging.getLogger(__name__)

STOP_ABORT_WAIT = 0.5  # s open associations get to send their A-ABORT at stop
STOP_TIMEOUT = 5.0  # s, at most, for the associations to end at stop
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0x0110

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


class LowLatencyDUL(DULServiceProvider):
    """pynetdicom's DICOM upper layer, polling faster while PDUs are arriving.

    pynetdicom's reactor sleeps ``_run_loop_delay`` (1 ms) whenever a pass finds nothing to do,
    which is every time it has read all a sender has written so far: a C-STORE of a 512 x 512
    slice pays that sleep several times, which halves the rate of one association (measured:
    320 vs 570 instances/s with a handler that does nothing). This subclass polls every 0.1 ms
    for ``BUSY_WINDOW`` s after the last PDU arrived, and at pynetdicom's 1 ms otherwise, so an
    idle association costs no more CPU than with pynetdicom's default.

    On a :class:`~dicom_ai.receive.transport.GuardedSocket` (every association the
    :class:`AssociationServer` admits) PDUs are read by :func:`~dicom_ai.receive.transport.read_pdu`:
    a declared length over the limit is refused with A-ABORT before the body is read (PS3.8
    9.3.8), and a PDU not complete within ``[node] network_timeout`` s is aborted.
    """

    BUSY_WINDOW = 0.05  # s after the last PDU during which the fast poll is used
    FAST_DELAY = 0.0001  # s
    IDLE_DELAY = 0.001  # s, pynetdicom's own

    _busy_until = 0.0

    @property
    def _run_loop_delay(self) -> float:
        return self.FAST_DELAY if time.monotonic() < self._busy_until else self.IDLE_DELAY

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # pynetdicom's __init__ sets its fixed default; the property decides instead

    def _is_transport_event(self) -> bool:
        ready = super()._is_transport_event()
        if ready:
            self._busy_until = time.monotonic() + self.BUSY_WINDOW
        return ready

    def _read_pdu_data(self) -> None:
        if isinstance(self.socket, GuardedSocket):
            read_pdu(self, self.socket)
        else:
            super()._read_pdu_data()


class BoundedBuffer(BytesIO):
    """The buffer a DIMSE message's data set is gathered in, holding at most ``limit`` bytes.

    Fragments past the limit are counted and dropped, and the buffer empties itself, so a sender
    claiming or streaming any size costs at most ``limit`` bytes; the C-STORE handler sees
    ``overflowed`` and answers 0xA700 once the message is complete (PS3.7 9.1.1.1.9: a response
    comes only after the whole request)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.received = 0  # bytes of data set fragments, kept or not
        self.overflowed = False

    def write(self, data: Any) -> int:
        n = len(data)
        self.received += n
        if self.overflowed:
            return n
        if self.received > self.limit:
            self.overflowed = True
            self.seek(0)
            self.truncate(0)
            return n
        return super().write(data)


#: the longest command set accepted (PS3.7 E.1: a command set holds a few short elements)
MAX_COMMAND_SET = 64 * 1024  # bytes


class WaitingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider whose non-blocking ``get_msg`` waits up to ``WAIT`` s, and
    whose messages are bounded in size.

    The acceptor's reactor loop sleeps 1 ms, then asks for a decoded message without blocking:
    a message that is ready waits for the end of that sleep. Waiting on the queue instead wakes
    the loop as soon as the message is complete, and makes an idle association's loop turn ~90
    times a second instead of ~1000 (release and abort are still seen within ``WAIT`` s).

    Each message's data set is gathered in a :class:`BoundedBuffer` of ``max_data_set`` bytes
    (the AE's ``dicom_ai_max_data_set``); a command set longer than ``MAX_COMMAND_SET`` aborts
    the association (A-ABORT, PS3.8 9.3.8).
    """

    WAIT = 0.01  # s

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            limit = getattr(self.assoc.ae, "dicom_ai_max_data_set", None)
            self.message = DIMSEMessage()
            if limit:
                self.message.data_set = BoundedBuffer(limit)
        message = self.message
        super().receive_primitive(primitive)
        if self.message is message and message.encoded_command_set.tell() > MAX_COMMAND_SET:
            log.warning("association from %s aborted: a command set longer than %d bytes",
                        self.assoc.requestor.address, MAX_COMMAND_SET)
            self.message = None
            self.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT (PS3.8 9.2.3, AA-8)

    def get_msg(self, block: bool = False) -> Any:
        if block:
            return super().get_msg(block=True)
        try:
            return self.msg_queue.get(timeout=self.WAIT)
        except queue.Empty:
            return None, None


def _use_low_latency_dul(event: evt.Event) -> None:
    """EVT_CONN_OPEN: give the new (acceptor) association :class:`LowLatencyDUL` and
    :class:`WaitingDIMSE` before its threads start."""
    assoc = event.assoc
    if type(assoc.dul) is DULServiceProvider and hasattr(assoc.dul, "_is_transport_event"):
        assoc.dul.__class__ = LowLatencyDUL
    if type(assoc.dimse) is DIMSEServiceProvider and hasattr(assoc.dimse, "msg_queue"):
        assoc.dimse.__class__ = WaitingDIMSE


def open_listener(bind_address: str, port: int, backlog: int = 1024) -> socket.socket:
    """Bind and listen on ``bind_address:port``; the socket the receiver processes share.

    ``backlog`` connections may wait for an accept (the kernel caps it at
    ``net.core.somaxconn``): a burst of connections then waits for the gate instead of having
    its SYNs dropped and retried a second or more later.

    Raises
    ------
    OSError
        If the address is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    return socket.create_server((bind_address, port), family=family, backlog=backlog)


class _AdmittedRequest(RequestHandler):
    """pynetdicom's request handler for a connection the gate admitted: the association's socket
    becomes a :class:`GuardedSocket` that serves the A-ASSOCIATE-RQ the gate read, and the
    handler returns when the association has ended."""

    def __init__(self, request: socket.socket, client_address: Any, server: AssociationServer,
                 first_pdu: bytes) -> None:
        self.first_pdu = first_pdu
        super().__init__(request, client_address, server)

    def handle(self) -> None:
        server: AssociationServer = self.server  # type: ignore[assignment]
        assoc = self._create_association()
        GuardedSocket.adopt(assoc.dul.socket, self.first_pdu, server.ae.network_timeout,
                            server.ae.maximum_pdu_size, str(self.client_address[0]))
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        if not server.track(assoc, True):
            return  # the server is stopping
        try:
            assoc.start()
            assoc.join()
        finally:
            assoc.dul.kill_dul()
            server.track(assoc, False)


class AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server behind an :class:`AssociationGate`.

    * The gate (``gate``, set before :meth:`serve_forever`) accepts connections and reads and
      checks each A-ASSOCIATE-RQ (and any TLS handshake) without a thread of its own; only an
      admitted connection gets a thread (:meth:`admit`), which runs pynetdicom's association on a
      :class:`GuardedSocket` and gives its association slot back when it ends.
    * It can serve a listening socket opened elsewhere (:func:`open_listener`) and shared by
      several receiver processes: the kernel queues connections on the one socket and whichever
      process is free accepts the next (the socket is non-blocking here, so a process that loses
      the race just goes back to waiting).
    * :meth:`shutdown` ends within ``STOP_ABORT_WAIT + STOP_TIMEOUT`` s whatever the peers do.
    """

    gate: AssociationGate | None = None
    request_queue_size = 1024  # listen backlog of a socket of its own (see open_listener)

    def __init__(self, *args: Any, listening_socket: socket.socket | None = None, **kwargs: Any):
        self._shared_socket = listening_socket
        self._open: set[Any] = set()  # associations running
        self._stopping = False
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self._shared_socket is None:
            super().server_bind()
            return
        self.socket.close()  # the one socketserver made; we serve the shared one
        self.socket = self._shared_socket
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self._shared_socket is None:
            super().server_activate()  # the shared socket is already listening

    def server_close(self) -> None:
        if self._shared_socket is None:
            super().server_close()
        else:
            self.socket.close()  # no shutdown(): that would stop the other processes listening

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Run the gate until :meth:`shutdown`.

        Raises
        ------
        RuntimeError
            If ``gate`` is not set.
        """
        if self.gate is None:
            raise RuntimeError("AssociationServer.gate is not set")
        self.gate.serve()

    def admit(self, sock: socket.socket, client_address: Any, first_pdu: bytes) -> None:
        """The gate's ``admit``: run the association in a thread of its own.

        Raises
        ------
        RuntimeError
            If no thread can be started (the gate then closes the connection).
        """
        threading.Thread(target=self._run_association, args=(sock, client_address, first_pdu),
                         name=f"association-{client_address[0]}", daemon=True).start()

    def _run_association(self, sock: socket.socket, client_address: Any, first_pdu: bytes) -> None:
        try:
            _AdmittedRequest(sock, client_address, self, first_pdu)
        except Exception:  # noqa: BLE001 - one association's fault must not escape its thread
            log.exception("association from %s failed", client_address[0])
        finally:
            if self.gate is not None:
                self.gate.slots.release(str(client_address[0]))
            self.shutdown_request(sock)

    def track(self, assoc: Any, running: bool) -> bool:
        """Note that ``assoc`` starts or ended (for :meth:`shutdown`); False when it must not
        start because the server is stopping."""
        with self._open_lock:
            if not running:
                self._open.discard(assoc)
            elif self._stopping:
                return False
            else:
                self._open.add(assoc)
        return True

    def open_associations(self) -> list[Any]:
        """The associations running now."""
        with self._open_lock:
            return list(self._open)

    def _wait_for(self, assocs: list[Any], until: float) -> list[Any]:
        while True:
            with self._open_lock:
                left = [a for a in assocs if a in self._open]
            if not left or time.monotonic() >= until:
                return left
            time.sleep(0.02)

    def shutdown(self) -> None:
        """Stop accepting (connections waiting in the gate are closed), then end the open
        associations: each gets an A-ABORT (PS3.8 9.3.8) and ``STOP_ABORT_WAIT`` s to send it;
        then the connections still open are shut down, which also ends a read or write blocked
        on a peer that stopped mid-PDU. Returns after at most ``STOP_TIMEOUT`` s more."""
        if self.gate is not None:
            self.gate.stop()
            self.gate.done.wait(2.0)
        with self._open_lock:
            self._stopping = True
        assocs = self.open_associations()
        if assocs:
            deadline = time.monotonic() + STOP_ABORT_WAIT + STOP_TIMEOUT
            for assoc in assocs:
                try:
                    assoc.abort(block=False)
                except Exception:  # noqa: BLE001 - the forced end below still applies
                    log.debug("abort failed", exc_info=True)
            left = self._wait_for(assocs, time.monotonic() + STOP_ABORT_WAIT)
            for assoc in left:
                _force_end(assoc)
            left = self._wait_for(left, deadline)
            if left:
                log.warning("%d association(s) did not end within %g s of the stop", len(left),
                            STOP_ABORT_WAIT + STOP_TIMEOUT)
        self.server_close()
        if self in self.ae._servers:
            self.ae._servers.remove(self)


def _force_end(assoc: Any) -> None:
    """End pynetdicom association ``assoc`` without its cooperation: stop both its reactors and
    shut its connection down (a blocked read or write returns at once)."""
    assoc._kill = True
    assoc.is_established = False
    assoc._reactor_checkpoint.set()
    assoc.dul.kill_dul()
    raw = getattr(assoc.dul.socket, "socket", None)
    if raw is not None:
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def image_storage_sop_classes() -> list[str]:
    """The image storage SOP classes (PS3.4 B.5) this node accepts."""
    out = []
    for cx in AllStoragePresentationContexts:
        name = UID(cx.abstract_syntax).name
        if "Image" in name and "Storage" in name:
            out.append(cx.abstract_syntax)
    return out



class StorageSCP:
    """C-ECHO/C-STORE SCP bound to one :class:`FileStore` and index."""

    def __init__(self, settings: Settings, store: FileStore, sessions: sessionmaker) -> None:
        self.settings = settings
        self.store = store
        self.sessions = sessions
        self.ae = AE(ae_title=settings.node.ae_title)
        # the Maximum Length Received offered (PS3.8 D.1) and enforced (max_pdu 0: the hard cap)
        self.ae.maximum_pdu_size = effective_pdu_limit(settings.node.max_pdu)
        self.ae.acse_timeout = settings.node.acse_timeout
        self.ae.dimse_timeout = settings.node.dimse_timeout
        self.ae.network_timeout = settings.node.network_timeout
        self.ae.dicom_ai_max_data_set = settings.node.max_instance_mb * 1024 * 1024  # WaitingDIMSE
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
        calling = assoc.requestor.primitive.calling_ae_title.strip()
        called = assoc.requestor.primitive.called_ae_title.strip()
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
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int | tuple[int, Any]:
        calling = event.assoc.requestor.ae_title.strip()
        rq = event.request
        limit = self.settings.node.max_instance_mb * 1024 * 1024
        if getattr(rq.DataSet, "overflowed", False):  # see BoundedBuffer
            log.warning("C-STORE %s from %s refused (0xA700): its data set of %d bytes exceeds "
                        "[node] max_instance_mb = %d", rq.AffectedSOPInstanceUID, calling,
                        rq.DataSet.received, self.settings.node.max_instance_mb)
            return STATUS_OUT_OF_RESOURCES
        try:
            raw = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # noqa: BLE001 - any decoding fault is the sender's
            log.warning("C-STORE from %s refused (0xC000): cannot read data set: %s", calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            transfer_syntax = event.context.transfer_syntax
            ds = read_received(raw, rq.DataSet.getbuffer(), transfer_syntax, event.file_meta, limit)
            association_id, series_seen = self._associations.get(event.assoc, ("", set()))
            meta = self._meta(ds, rq, transfer_syntax, association_id)
            check_pixel_data(ds, transfer_syntax, limit)
        except Refusal as refusal:
            log.warning("C-STORE from %s refused (0x%04X): %s", calling, refusal.status, refusal)
            return refusal.status
        except Exception as exc:  # noqa: BLE001
            log.warning("C-STORE from %s refused (0xC000): cannot parse data set: %s", calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        reserve = self.settings.node.min_free_mb * 1024 * 1024
        if self.store.free_bytes() - len(raw) < reserve:
            log.error(
                "C-STORE %s refused (0xA700): less than [node] min_free_mb = %d MiB free in %s",
                meta.sop_instance_uid,
                self.settings.node.min_free_mb,
                self.store.root,
            )
            return STATUS_OUT_OF_RESOURCES
        relpath = self.store.instance_relpath(meta.study_uid, meta.series_uid, meta.sop_instance_uid)
        # identity checks, write and index (dicom_ai.cache.index): an instance whose patient
        # differs from its study's, whose series is stored under another study, or whose SOP
        # Instance UID is stored in another series is refused with 0xA900 (PS3.4 B.2.3) and
        # nothing stored changes; a re-sent UID in the same series follows [node] resent_instance
        try:
            stored = store_instance(self.sessions, self.store, meta, relpath, raw, calling,
                                    self.settings.node.resent_instance)
        except OSError as exc:
            log.error("C-STORE %s failed (0xA700): %s", meta.sop_instance_uid, exc)
            return STATUS_OUT_OF_RESOURCES
        except Exception:
            log.exception("C-STORE %s failed (0x0110): could not index", meta.sop_instance_uid)
            return STATUS_PROCESSING_FAILURE
        conflict = stored.conflict  # its detail names attributes, never their values (no PHI)
        if stored.outcome == "refused":
            log.warning("C-STORE %s of series %s from %s refused (0x%04X): %s conflict: %s",
                        meta.sop_instance_uid, meta.series_uid, calling, STATUS_DATASET_MISMATCH,
                        conflict.kind, conflict.detail)
            return STATUS_DATASET_MISMATCH
        if stored.outcome in ("kept_first", "replaced"):
            log.warning("C-STORE %s of series %s from %s: %s", meta.sop_instance_uid,
                        meta.series_uid, calling, conflict.detail)
        series_seen.add(meta.series_uid)
        return STATUS_SUCCESS

    def _count(self, name: str) -> None:
        try:
            count(self.sessions, name)
        except Exception:  # noqa: BLE001 - a metric must never refuse an association
            log.exception("counter %s not updated", name)

    def _on_released(self, event: evt.Event) -> None:
        """A-RELEASE: the series this association brought may now be whole (issue 4)."""
        self._count("associations_ended")
        association_id, series_seen = self._associations.pop(event.assoc, ("", set()))
        if series_seen:
            try:
                mark_released(self.sessions, association_id, sorted(series_seen))
            except Exception:  # noqa: BLE001 - the idle timer still completes the series
                log.exception("could not record the release of association %s", association_id)

    def _on_aborted(self, event: evt.Event) -> None:
        if self._associations.pop(event.assoc, None) is not None:  # an accepted one
            self._count("associations_ended")  # (an abort says nothing about completeness)

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
        sop_class = str(ds.get("SOPClassUID", "") or "").strip()
        sop_inst = str(ds.get("SOPInstanceUID", "") or "").strip()
        if sop_class != str(rq.AffectedSOPClassUID) or sop_inst != str(rq.AffectedSOPInstanceUID):
            raise Refusal(
                STATUS_DATASET_MISMATCH,
                f"data set SOP Class/Instance UID ({sop_class or 'empty'}, {sop_inst or 'empty'}) "
                f"does not match the request ({rq.AffectedSOPClassUID}, "
                f"{rq.AffectedSOPInstanceUID})",
            )
        try:
            return instance_meta(ds, transfer_syntax, association)
        except InvalidUID as exc:
            raise Refusal(STATUS_DATASET_MISMATCH, str(exc)) from None

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
        handlers = [
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
        self.ae._servers = []

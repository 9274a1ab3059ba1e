"""Guards on the DICOM port: what a connection must do before pynetdicom gives it a thread,
how many associations a node holds, and how long and how large each PDU may be.

The DICOM upper layer (PS3.8 9) is a stream of PDUs, each a 6-byte header (type, reserved,
32-bit length) and a body of that length. pynetdicom reads them with blocking calls on sockets
without timeouts, buffers a whole PDU whatever its declared length, and gives every accepted
connection a thread, so a peer that connects and stays silent (or sends half a header) holds a
thread and an association slot for ever. Here:

* :class:`AssociationGate` is the pre-association stage: one thread per receiver process
  accepts connections (non-blocking) and reads each one's first PDU with a deadline of
  ``[node] association_request_timeout``, all connections in one ``selectors`` loop and none with
  a thread of its own. Only a complete A-ASSOCIATE-RQ (PS3.8 9.3.2) of at most
  :data:`ASSOCIATION_PDU_LIMIT` bytes, from a calling AE title and address that ``[[peers]]``
  allows, with an association slot free, goes on to pynetdicom; the rest are refused there with
  A-ASSOCIATE-RJ (PS3.8 9.3.4), A-ABORT (PS3.8 9.3.8) or a closed connection, one log line each.
* :class:`AssociationSlots` counts a node's open associations, in total and per remote address,
  in shared memory, so ``[node] max_associations`` and ``max_associations_per_address`` hold for
  the node however the kernel spreads connections over its receiver processes.
* :class:`GuardedSocket` (pynetdicom's socket wrapper, given to each admitted association) gives
  every PDU read and every PDU write a deadline of ``[node] network_timeout``, and
  :func:`read_pdu` refuses a PDU whose declared length is over the limit before its body is read.
* :class:`AssociationServer` runs pynetdicom's association for each admitted connection, and its
  providers are tuned: :class:`LowLatencyDUL` wakes when a PDU arrives or is to be sent, and reads them
  through :func:`read_pdu`; :class:`WaitingDIMSE` wakes on a complete message and gathers each
  data set in a :class:`BoundedBuffer`. The C-STORE policy itself is in
  :mod:`dicom_ai.receive.scp`.
"""

from __future__ import annotations

import copy
import errno
import logging
import multiprocessing as mp
import queue
import select
import selectors
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from io import BytesIO
from typing import Any, Iterator, cast

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_ai.dicom.encoding import c_store_rsp_command

log = logging.getLogger(__name__)

#: Largest A-ASSOCIATE-RQ/AC/RJ, A-RELEASE or A-ABORT PDU body accepted (bytes). An
#: A-ASSOCIATE-RQ proposing 128 presentation contexts (the most PS3.8 9.3.2.2 allows) of 64-byte
#: UIDs with 4 transfer syntaxes each is ~43 KiB.
ASSOCIATION_PDU_LIMIT = 64 * 1024
#: Largest P-DATA-TF PDU body accepted whatever ``[node] max_pdu`` says, and the one offered
#: when ``max_pdu`` is 0 ("unlimited"), bytes: pynetdicom holds a whole PDU in memory (~3 copies).
PDU_HARD_CAP = 16 * 1024 * 1024
#: Connections one process keeps waiting for their A-ASSOCIATE-RQ; past it the oldest waiting
#: connection of the address with the most waiting is dropped.
MAX_PENDING = 512
#: Connections accepted in a row before the gate looks at the others (a process takes a burst
#: without leaving it all to the kernel's backlog; with other receiver processes it asks before
#: each accept whether a less busy one should take it).
ACCEPT_BATCH = 4
#: Seconds a busier receiver process waits, per association it holds or is being sent above the
#: least busy, before it accepts (so connections spread over the processes), and at most; a busy
#: process's gate may wait for the interpreter lock for 5 ms (the switch interval) before it runs.
YIELD_PER_ASSOCIATION = 0.01
YIELD_MAX = 0.03
#: What the node's own process (row 0 of :class:`AssociationSlots`) counts above what it holds,
#: in associations: its scheduler, outbox and web pages share its interpreter, so it gives way
#: to a receiver process holding as many, and takes a connection before one holding more.
NODE_PROCESS_WEIGHT = 0.5
#: Seconds a refused connection is kept half-closed after its A-ASSOCIATE-RJ or A-ABORT, so the
#: peer reads it before the connection closes (PS3.8 9.1.5: the ARTIM timer after a reject).
LINGER = 1.0
#: Fixed part of an A-ASSOCIATE-RQ body (PS3.8 Table 9-11: protocol version, reserved, called and
#: calling AE titles, reserved), bytes.
RQ_FIXED_BYTES = 68

PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT",
}

# A-ABORT source 2 (DICOM UL service-provider) reasons, PS3.8 9.3.8 Table 9-26
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06


def effective_pdu_limit(max_pdu: int) -> int:
    """The Maximum Length Received (PS3.8 D.1) this node offers and enforces for ``[node]
    max_pdu`` bytes: ``max_pdu``, or :data:`PDU_HARD_CAP` when it is 0 or larger."""
    return PDU_HARD_CAP if max_pdu <= 0 else min(max_pdu, PDU_HARD_CAP)


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): result 1 permanent / 2 transient; source 1 service
    user, 2 service provider (ACSE), 3 service provider (presentation)."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


def abort_pdu(reason: int, source: int = 0x02) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8), by default from the service provider (source 2)."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, source, reason)


# --------------------------------------------------------------------------------------------
# Association slots
# --------------------------------------------------------------------------------------------


class AssociationSlots:
    """The open associations of a node, limited to ``limit`` in all and ``per_address`` from any
    one remote address (``[node] max_associations``, ``max_associations_per_address``).

    The counts are in shared memory, one row per receiver process (its total, its count per
    address bucket, and the connections it accepted that have not yet been admitted or
    refused, see :meth:`arriving`): the limits are the node's, not split over processes. A
    process changes only its own row (:meth:`for_process`), and a replacement process clears the row of the one it
    replaces (:meth:`clear`), whose connections ended with it. Addresses are hashed into
    ``BUCKETS`` buckets: two addresses in one bucket make the per-address limit stricter for
    both, never looser. Pass an instance to a spawned process as an argument of ``Process``.
    """

    BUCKETS = 1024
    LOCK_WAIT = 1.0  # s; a process killed while holding the lock must not stop the others

    def __init__(self, limit: int, per_address: int, processes: int = 1) -> None:
        self.limit = limit
        self.per_address = per_address
        self.processes = max(1, processes)
        self._arriving = 1 + self.BUCKETS  # offset in a row of its arriving connections
        self._stride = 2 + self.BUCKETS
        self._counts = mp.get_context("spawn").Array("i", self.processes * self._stride)
        self.row = 0

    def for_process(self, number: int) -> AssociationSlots:
        """The view receiver process ``number`` (0 = the node's own) counts in."""
        if not 0 <= number < self.processes:
            raise ValueError(f"process {number} outside 0..{self.processes - 1}")
        view = copy.copy(self)
        view.row = number
        return view

    def _bucket(self, address: str) -> int:
        return 1 + zlib.crc32(address.encode("utf-8", "replace")) % self.BUCKETS

    @contextmanager
    def _locked(self) -> Iterator[Any]:
        lock = self._counts.get_lock()
        got = lock.acquire(timeout=self.LOCK_WAIT)
        try:
            yield self._counts.get_obj()
        finally:
            if got:
                lock.release()

    def clear(self) -> None:
        """Forget this process's row (its former holder's connections are gone)."""
        with self._locked() as counts:
            base = self.row * self._stride
            for i in range(base, base + self._stride):
                counts[i] = 0

    def acquire(self, address: str) -> str | None:
        """Take a slot for an association from ``address``; None when taken, else which limit
        is reached (a phrase for the log)."""
        bucket = self._bucket(address)
        with self._locked() as counts:
            rows = range(0, self.processes * self._stride, self._stride)
            if sum(counts[r] for r in rows) >= self.limit:
                return f"[node] max_associations = {self.limit} open"
            if sum(counts[r + bucket] for r in rows) >= self.per_address:
                return f"[node] max_associations_per_address = {self.per_address} open from {address}"
            base = self.row * self._stride
            counts[base] += 1
            counts[base + bucket] += 1
        return None

    def release(self, address: str) -> None:
        """Give back the slot :meth:`acquire` took for ``address``."""
        bucket = self._bucket(address)
        with self._locked() as counts:
            base = self.row * self._stride
            counts[base] = max(0, counts[base] - 1)
            counts[base + bucket] = max(0, counts[base + bucket] - 1)

    def arriving(self, change: int) -> None:
        """Add ``change`` (+1 at accept, -1 once admitted or refused) to this process's
        connections that have arrived but hold no slot yet. :meth:`lead` counts them, so a burst
        of connections spreads over the processes before any of them is admitted."""
        with self._locked() as counts:
            at = self.row * self._stride + self._arriving
            counts[at] = max(0, counts[at] + change)

    def lead(self) -> float:
        """How many more associations this process holds, or is being sent, than the least busy
        one (0 for the least busy). The node's own process (row 0) counts
        :data:`NODE_PROCESS_WEIGHT` more than it holds: of two processes holding as many, the
        receiver process takes the next connection."""
        with self._locked() as counts:
            totals: list[float] = [counts[r] + counts[r + self._arriving]
                                   for r in range(0, self.processes * self._stride, self._stride)]
        if self.processes > 1:
            totals[0] += NODE_PROCESS_WEIGHT
        return totals[self.row] - min(totals)

    def open(self, address: str | None = None) -> int:
        """Associations open in the node (from ``address``, when given)."""
        offset = 0 if address is None else self._bucket(address)
        with self._locked() as counts:
            return sum(counts[r + offset] for r in range(0, self.processes * self._stride, self._stride))


# --------------------------------------------------------------------------------------------
# The socket of an admitted association
# --------------------------------------------------------------------------------------------


class GuardedSocket(AssociationSocket):
    """pynetdicom's :class:`AssociationSocket` with a deadline on every PDU read and write, and
    the first PDU (the A-ASSOCIATE-RQ the gate read) served again to pynetdicom's reader.

    Made from the wrapper pynetdicom created, by :meth:`adopt`. ``timeout`` (s) bounds each
    read or write on the socket; between :meth:`begin_pdu` and :meth:`end_pdu` all reads together
    must finish within it too, so a PDU that stops half-way fails within ``timeout`` s however
    its bytes trickle in.
    """

    timeout: float
    pdu_limit: int
    deadline: float | None
    peer: str
    _replay: bytearray

    @classmethod
    def adopt(cls, wrapper: AssociationSocket, first_pdu: bytes, timeout: float, pdu_limit: int,
              peer: str) -> GuardedSocket:
        wrapper.__class__ = cls
        guarded: GuardedSocket = wrapper  # type: ignore[assignment]
        guarded._replay = bytearray(first_pdu)
        guarded.timeout = timeout
        guarded.pdu_limit = pdu_limit
        guarded.deadline = None
        guarded.peer = peer
        if guarded.socket is not None:
            guarded.socket.settimeout(timeout)
        return guarded

    @property
    def ready(self) -> bool:
        if self._replay and self.socket is not None:
            return True
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def begin_pdu(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def end_pdu(self) -> None:
        self.deadline = None

    def _arm(self, sock: socket.socket, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        sock.settimeout(remaining)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (fewer if the peer closes).

        Raises
        ------
        TimeoutError
            If they do not arrive within the PDU's deadline (or ``timeout`` s).
        OSError
            If the connection fails.
        """
        out = bytearray(nr_bytes)
        got = 0
        if self._replay:
            got = min(nr_bytes, len(self._replay))
            out[:got] = self._replay[:got]
            del self._replay[:got]
        sock = self.socket
        if got < nr_bytes and sock is not None:
            deadline = self.deadline if self.deadline is not None else time.monotonic() + self.timeout
            view = memoryview(out)
            try:
                while got < nr_bytes:
                    self._arm(sock, deadline)
                    n = sock.recv_into(view[got:], nr_bytes - got)
                    if n == 0:
                        break
                    got += n
            finally:
                view.release()
                _settimeout(sock, self.timeout)
        if got < nr_bytes:
            del out[got:]
        return out

    def send(self, bytestream: bytes) -> None:
        """Send ``bytestream`` within ``timeout`` s in all; on failure (or a peer that does not
        read) queue Evt17, transport connection closed (PS3.8 9.2), as pynetdicom does."""
        sock = self.socket
        deadline = time.monotonic() + self.timeout
        view = memoryview(bytestream)
        sent = 0
        try:
            if sock is None:
                raise OSError(errno.ENOTCONN, "not connected")
            while sent < len(view):
                self._arm(sock, deadline)
                sent += sock.send(view[sent:])
            evt.trigger(self.assoc, evt.EVT_DATA_SENT, {"data": bytestream})
        except Exception as exc:  # noqa: BLE001 - pynetdicom's contract: any failure is Evt17
            if isinstance(exc, TimeoutError):
                log.warning("association from %s aborted: the peer took more than network_timeout"
                            " = %g s to read %d bytes", self.peer, self.timeout, len(view))
            self.event_queue.put("Evt17")
        finally:
            view.release()
            if sock is not None:
                _settimeout(sock, self.timeout)

    def abort_and_close(self, reason: int) -> None:
        """Send an A-ABORT (service provider, ``reason``; PS3.8 9.3.8) if the socket takes it at
        once, then close the connection (Evt17 follows)."""
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(0.5)
                sock.send(abort_pdu(reason))
            except OSError:
                pass
        self.close()


def _settimeout(sock: socket.socket, timeout: float) -> None:
    try:
        sock.settimeout(timeout)
    except OSError:
        pass


def read_pdu(dul: Any, sock: GuardedSocket) -> None:
    """Read one PDU for pynetdicom's DUL provider ``dul`` (its ``_read_pdu_data``), with bounds.

    As pynetdicom: the PDU's event and decoded PDU go on ``dul.event_queue`` / ``dul._recv_pdu``
    (Evt17 if the connection closes, Evt19 for an unknown type or undecodable body, PS3.8 9.2).
    Besides: a P-DATA-TF body longer than ``sock.pdu_limit`` (plus one PDV item header, 6 bytes,
    for senders counting the fragment alone) or any other PDU body longer than
    :data:`ASSOCIATION_PDU_LIMIT` is refused with A-ABORT (invalid PDU parameter value, PS3.8
    9.3.8) before its body is read, and a PDU not complete within ``sock.timeout`` s is aborted.
    """
    sock.begin_pdu()
    try:
        header = sock.recv(6)
        if len(header) < 6:
            dul.event_queue.put("Evt17")  # closed by the peer
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in PDU_NAMES:
            log.warning("association from %s aborted: unknown PDU type 0x%02X", sock.peer, pdu_type)
            dul.event_queue.put("Evt19")
            return
        limit = sock.pdu_limit + 6 if pdu_type == 0x04 else ASSOCIATION_PDU_LIMIT
        if length > limit:
            log.warning("association from %s aborted: %s of %d bytes declared, over the %d-byte "
                        "limit", sock.peer, PDU_NAMES[pdu_type], length, limit)
            sock.abort_and_close(ABORT_INVALID_PARAMETER)
            return
        body = sock.recv(length)
    except TimeoutError:
        log.warning("association from %s aborted: a PDU not complete within network_timeout = %g s",
                    sock.peer, sock.timeout)
        sock.abort_and_close(ABORT_NOT_SPECIFIED)
        return
    except OSError as exc:
        log.info("association from %s: connection lost (%s)", sock.peer, exc)
        dul.event_queue.put("Evt17")
        return
    finally:
        sock.end_pdu()
    if len(body) != length:
        log.warning("association from %s ended: connection closed %d bytes into a %d-byte %s",
                    sock.peer, len(body), length, PDU_NAMES[pdu_type])
        dul.event_queue.put("Evt17")
        return
    try:
        pdu, event = dul._decode_pdu(header + body)
    except Exception as exc:  # noqa: BLE001 - whatever the peer sent
        log.warning("association from %s aborted: undecodable %s (%s)", sock.peer,
                    PDU_NAMES[pdu_type], exc)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


# --------------------------------------------------------------------------------------------
# The pre-association stage
# --------------------------------------------------------------------------------------------

#: ``policy(calling, called, address)``: None to allow, else ``(reason, text)`` for an
#: A-ASSOCIATE-RJ permanent, source service user (PS3.8 9.3.4) and the log.
Policy = Callable[[str, str, str], "tuple[int, str] | None"]
#: ``admit(sock, client_address, first_pdu)``: run the association (the slot is taken).
Admit = Callable[[socket.socket, Any, bytes], None]


class _Waiting:
    """A connection in the gate: TLS handshake, reading its first PDU, or closing."""

    __slots__ = ("sock", "client", "address", "deadline", "buf", "length", "state", "mask")

    def __init__(self, sock: socket.socket, client: Any, deadline: float, state: str) -> None:
        self.sock = sock
        self.client = client
        self.address = str(client[0])
        self.deadline = deadline
        self.buf = bytearray()
        self.length = -1  # the PDU body length, once the header is in
        self.state = state  # "tls", "rq" or "closing"
        self.mask = selectors.EVENT_READ


class AssociationGate:
    """Accept connections on ``listener`` and admit only bounded A-ASSOCIATE-RQs (the
    pre-association stage; see the module docstring).

    Per connection, within ``request_timeout`` s of its accept (``[node]
    association_request_timeout``; a TLS handshake included): the TLS handshake, if
    ``ssl_context``; a first PDU header of type A-ASSOCIATE-RQ (else A-ABORT, unexpected or
    unrecognised PDU) declaring at most :data:`ASSOCIATION_PDU_LIMIT` bytes (else A-ABORT,
    invalid PDU parameter value; PS3.8 9.3.8), then its body. Then ``policy`` (calling and called
    AE title, address: A-ASSOCIATE-RJ permanent) and ``slots`` (A-ASSOCIATE-RJ transient,
    service provider presentation, local limit exceeded; PS3.8 9.3.4), and ``admit``. A connection
    that has not sent its request in time is closed (as on ARTIM expiry, PS3.8 9.1.5). Each
    refusal or drop logs one line (addresses and AE titles only) and, for refused requests,
    calls ``count("associations_refused")``.
    """

    def __init__(self, listener: socket.socket, *, request_timeout: float, slots: AssociationSlots,
                 policy: Policy, admit: Admit, ssl_context: ssl.SSLContext | None = None,
                 count: Callable[[str], None] = lambda name: None) -> None:
        self.listener = listener
        self.request_timeout = request_timeout
        self.slots = slots
        self.policy = policy
        self.admit = admit
        self.ssl_context = ssl_context
        self.count = count
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[int, _Waiting] = {}  # id -> connection, oldest first
        self._by_address: dict[str, dict[int, _Waiting]] = {}
        self._stop = threading.Event()
        self.done = threading.Event()
        self._accept_paused_until = 0.0

    # -- loop ------------------------------------------------------------------------------
    def serve(self) -> None:
        """Run until :meth:`stop`; then close every connection still waiting."""
        self.listener.setblocking(False)
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        next_sweep = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                listening = now >= self._accept_paused_until
                for key, mask in self._selector.select(0.1):
                    if key.data is None:
                        if listening:
                            for _ in range(ACCEPT_BATCH):
                                self._yield_to_idler_processes()
                                if not self._accept():
                                    break
                    else:
                        try:
                            self._advance(key.data, mask)
                        except Exception:  # noqa: BLE001 - one connection must not stop the gate
                            log.exception("connection from %s dropped: unexpected error",
                                          key.data.address)
                            self._close(key.data)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + 0.1
                if not listening:
                    time.sleep(0.01)
        except Exception:  # noqa: BLE001 - log, then stop serving rather than die silently
            log.exception("association gate failed")
            raise
        finally:
            for w in list(self._waiting.values()):
                self._close(w)
            try:
                self._selector.unregister(self.listener)
            except (KeyError, ValueError, OSError):
                pass
            self._selector.close()
            self.done.set()

    def stop(self) -> None:
        """Ask :meth:`serve` to return (within ~0.1 s)."""
        self._stop.set()

    def _yield_to_idler_processes(self) -> None:
        """Before accepting, let a receiver process with fewer associations take the connection:
        wait ``YIELD_PER_ASSOCIATION`` s per association this process holds or is being sent
        above the least busy one (:meth:`AssociationSlots.lead`; at most ``YIELD_MAX`` s). The
        kernel wakes every process for each connection, and the first to accept gets it (and
        its association's work)."""
        if self.slots.processes > 1:
            lead = self.slots.lead()
            if lead > 0:
                time.sleep(min(YIELD_MAX, YIELD_PER_ASSOCIATION * lead))

    # -- bookkeeping -------------------------------------------------------------------------
    def waiting(self) -> int:
        """Connections waiting for their A-ASSOCIATE-RQ (or closing) now."""
        return len(self._waiting)

    def _add(self, w: _Waiting) -> None:
        self.slots.arriving(+1)
        self._waiting[id(w)] = w
        self._by_address.setdefault(w.address, {})[id(w)] = w
        self._selector.register(w.sock, w.mask, w)

    def _remove(self, w: _Waiting) -> None:
        if self._waiting.pop(id(w), None) is None:
            return
        if w.state != "closing":  # a refused one stopped arriving when it was refused
            self.slots.arriving(-1)
        same = self._by_address.get(w.address)
        if same is not None:
            same.pop(id(w), None)
            if not same:
                del self._by_address[w.address]
        try:
            self._selector.unregister(w.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _close(self, w: _Waiting) -> None:
        self._remove(w)
        try:
            w.sock.close()
        except OSError:
            pass

    def _watch(self, w: _Waiting, mask: int) -> None:
        if mask != w.mask:
            w.mask = mask
            self._selector.modify(w.sock, mask, w)

    def _evict(self) -> bool:
        """Drop the oldest waiting connection of the address with the most waiting."""
        if not self._by_address:
            return False
        address = max(self._by_address, key=lambda a: len(self._by_address[a]))
        oldest = next(iter(self._by_address[address].values()))
        log.warning("connection from %s dropped: %d connections wait for an A-ASSOCIATE-RQ, "
                    "%d of them from this address", address, len(self._waiting),
                    len(self._by_address[address]))
        self._close(oldest)
        return True

    def _sweep(self, now: float) -> None:
        for w in [w for w in self._waiting.values() if w.deadline <= now]:
            if w.state != "closing":
                log.warning("connection from %s dropped: no complete A-ASSOCIATE-RQ within "
                            "[node] association_request_timeout = %g s (%d bytes received)",
                            w.address, self.request_timeout, len(w.buf))
            self._close(w)

    # -- steps ------------------------------------------------------------------------------
    def _accept(self) -> bool:
        """Accept one connection; False when there was none to accept."""
        try:
            sock, client = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False  # another receiver process took it, or the peer gave up
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("cannot accept connections: %s", exc.strerror)
                if not self._evict():
                    self._accept_paused_until = time.monotonic() + 0.1
            return False
        if len(self._waiting) >= MAX_PENDING:
            self._evict()
        sock.setblocking(False)
        deadline = time.monotonic() + self.request_timeout
        if self.ssl_context is None:
            self._add(_Waiting(sock, client, deadline, "rq"))
            return True
        try:
            tls = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            log.warning("connection from %s refused: TLS handshake failed: %s", client[0], exc)
            sock.close()
            return True
        self._add(_Waiting(tls, client, deadline, "tls"))
        return True

    def _advance(self, w: _Waiting, mask: int) -> None:
        if id(w) not in self._waiting:
            return  # closed earlier in this turn (evicted)
        if w.state == "closing":
            self._drain(w)
        elif w.state == "tls":
            self._handshake(w)
        else:
            self._read(w)

    def _handshake(self, w: _Waiting) -> None:
        try:
            w.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._watch(w, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(w, selectors.EVENT_WRITE)
            return
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = getattr(exc, "reason", None) or exc
            log.warning("connection from %s refused: TLS handshake failed: %s", w.address, reason)
            self._close(w)
            return
        w.state = "rq"
        self._watch(w, selectors.EVENT_READ)
        self._read(w)  # application data may have come with the handshake

    def _read(self, w: _Waiting) -> None:
        while True:
            need = (6 if w.length < 0 else 6 + w.length) - len(w.buf)
            try:
                chunk = w.sock.recv(need)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError as exc:
                log.debug("connection from %s lost before its A-ASSOCIATE-RQ: %s", w.address, exc)
                self._close(w)
                return
            if not chunk:
                log.debug("connection from %s closed before its A-ASSOCIATE-RQ (%d bytes)",
                          w.address, len(w.buf))
                self._close(w)
                return
            w.buf += chunk
            if w.length < 0 and len(w.buf) == 6:
                pdu_type, _, length = struct.unpack(">BBL", w.buf)
                if pdu_type != 0x01:
                    name = PDU_NAMES.get(pdu_type, f"unknown PDU type 0x{pdu_type:02X}")
                    log.warning("connection from %s refused: its first PDU is %s, not "
                                "A-ASSOCIATE-RQ", w.address, name)
                    reason = ABORT_UNEXPECTED_PDU if pdu_type in PDU_NAMES else ABORT_UNRECOGNIZED_PDU
                    self._refuse(w, abort_pdu(reason))
                    return
                if not RQ_FIXED_BYTES <= length <= ASSOCIATION_PDU_LIMIT:
                    log.warning("connection from %s refused: A-ASSOCIATE-RQ of %d bytes declared, "
                                "outside %d..%d", w.address, length, RQ_FIXED_BYTES,
                                ASSOCIATION_PDU_LIMIT)
                    self._refuse(w, abort_pdu(ABORT_INVALID_PARAMETER))
                    return
                w.length = length
            if w.length >= 0 and len(w.buf) == 6 + w.length:
                self._decide(w)
                return

    def _decide(self, w: _Waiting) -> None:
        data = bytes(w.buf)
        # PS3.8 Table 9-11: called AE title bytes 11-26, calling AE title bytes 27-42
        called = data[10:26].decode("ascii", "replace").strip()
        calling = data[26:42].decode("ascii", "replace").strip()
        refusal = self.policy(calling, called, w.address)
        if refusal is not None:
            reason, why = refusal
            log.warning("association refused: %s", why)
            self.count("associations_refused")
            self._refuse(w, reject_pdu(0x01, 0x01, reason))
            return
        full = self.slots.acquire(w.address)
        if full is not None:
            log.warning("association from %s at %s refused: local limit exceeded (%s)",
                        calling, w.address, full)
            self.count("associations_refused")
            self._refuse(w, reject_pdu(0x02, 0x03, 0x02))
            return
        self._remove(w)
        try:
            w.sock.setblocking(True)
            self.admit(w.sock, w.client, data)
        except Exception:  # noqa: BLE001 - e.g. no thread could be started
            log.exception("association from %s at %s could not be started", calling, w.address)
            self.slots.release(w.address)
            try:
                w.sock.close()
            except OSError:
                pass

    def _refuse(self, w: _Waiting, pdu: bytes) -> None:
        """Send ``pdu`` (A-ASSOCIATE-RJ or A-ABORT), then keep the connection half-closed for
        :data:`LINGER` s, discarding what comes, so the peer reads it before the close."""
        try:
            w.sock.send(pdu)
            if isinstance(w.sock, ssl.SSLSocket):
                raise OSError("no half-close with TLS")
            w.sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            self._close(w)
            return
        w.state = "closing"
        self.slots.arriving(-1)
        w.deadline = time.monotonic() + LINGER
        self._watch(w, selectors.EVENT_READ)

    def _drain(self, w: _Waiting) -> None:
        try:
            for _ in range(16):  # at most 1 MiB a turn, whatever the peer keeps sending
                if not w.sock.recv(65536):
                    break
            else:
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close(w)  # the peer closed (or failed)


# --------------------------------------------------------------------------------------------
# pynetdicom tuned: the association server, its DUL and DIMSE providers
# --------------------------------------------------------------------------------------------

STOP_ABORT_WAIT = 0.5  # s open associations get to send their A-ABORT at stop
STOP_TIMEOUT = 5.0  # s, at most, for the associations to end at stop


class _Waker:
    """A socket pair one thread writes a byte to so that another, waiting in ``select(2)`` on
    :attr:`fd` (with other sockets), wakes at once. Safe to use after :meth:`close`: every call
    then does nothing."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    @property
    def fd(self) -> socket.socket:
        return self._r

    def wake(self) -> None:
        try:
            self._w.send(b"\0")
        except OSError:  # full (a wake is pending anyway) or closed
            pass

    def drain(self) -> None:
        try:
            while self._r.recv(4096):
                pass
        except OSError:  # nothing left (BlockingIOError) or closed
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()


class LowLatencyDUL(DULServiceProvider):
    """pynetdicom's DICOM upper layer, waking on what it waits for instead of polling.

    pynetdicom's reactor sleeps ``_run_loop_delay`` (1 ms) whenever a pass finds nothing to do:
    a PDU that arrives, or a PDU the association thread queues to send (a C-STORE response),
    waits for the end of that sleep. That costs one association about half its rate on a fast
    sender, and a shorter sleep makes the thread compete for the GIL with the C-STORE handler.
    Here the sleep waits in ``select(2)`` on the connection and on a :class:`_Waker` that
    :meth:`send_pdu` and :meth:`kill_dul` write to, for at most ``IDLE_DELAY`` s (the reactor's
    timers are checked as often as pynetdicom checks them). The reactor reads
    ``_run_loop_delay`` just before it sleeps; this class waits in that read and returns 0.

    On a :class:`~dicom_ai.receive.transport.GuardedSocket` (every association the
    :class:`AssociationServer` admits) PDUs are read by :func:`~dicom_ai.receive.transport.read_pdu`:
    a declared length over the limit is refused with A-ABORT before the body is read (PS3.8
    9.3.8), and a PDU not complete within ``[node] network_timeout`` s is aborted.
    """

    IDLE_DELAY = 0.001  # s, pynetdicom's own

    _waker: _Waker | None = None  # set by _use_low_latency_dul before the thread starts

    @property
    def _run_loop_delay(self) -> float:
        if threading.current_thread() is not self or self._waker is None:
            return self.IDLE_DELAY  # another thread waiting for this one to end (stop_dul)
        self._nap(self._waker)
        return 0.0

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # pynetdicom's __init__ sets its fixed default; the property decides instead

    def _nap(self, waker: _Waker) -> None:
        """Wait until the peer sends, a PDU is queued to be sent, the reactor is to stop, or
        ``IDLE_DELAY`` s have passed."""
        sock = getattr(self.socket, "socket", None)
        waiting: list[Any] = [waker.fd] if sock is None else [waker.fd, sock]
        try:
            ready, _, _ = select.select(waiting, [], [], self.IDLE_DELAY)
        except (OSError, ValueError):  # a socket closed meanwhile: the reactor sees it next
            time.sleep(self.IDLE_DELAY)
            return
        if waker.fd in ready:
            waker.drain()

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        if self._waker is not None:
            self._waker.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        if self._waker is not None:
            self._waker.wake()

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self._waker is not None:
                self._waker.close()

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

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """Send a DIMSE message; a plain C-STORE response (a status and the two UIDs, nothing
        optional) goes as one P-DATA PDV whose command set is encoded directly
        (:func:`~dicom_ai.dicom.encoding.c_store_rsp_command`, byte-identical to pynetdicom's
        encoding, which takes about 0.6 ms per instance). No ``EVT_DIMSE_SENT`` is triggered for
        it; pynetdicom binds only its debug-logging handler to that event."""
        if (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
                and isinstance(primitive.Status, int) and primitive.ErrorComment is None
                and primitive.OffendingElement is None and primitive.AffectedSOPClassUID
                and primitive.AffectedSOPInstanceUID):
            command = c_store_rsp_command(primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID,
                                          primitive.MessageIDBeingRespondedTo, primitive.Status)
            if not self.maximum_pdu_size or len(command) + 6 <= self.maximum_pdu_size:
                pdata = P_DATA()
                # the last (and only) fragment of a command (PS3.8 E.2: message control header 0x03)
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)

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
    if type(assoc.dul) is DULServiceProvider and hasattr(assoc.dul, "_read_pdu_data"):
        assoc.dul.__class__ = LowLatencyDUL
        cast(LowLatencyDUL, assoc.dul)._waker = _Waker()  # closed as the DUL thread ends (run)
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
        wrapper, timeout = assoc.dul.socket, server.ae.network_timeout
        assert wrapper is not None and timeout is not None  # connected; StorageSCP sets the timeout
        GuardedSocket.adopt(wrapper, self.first_pdu, timeout,
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
        assert self.socket is not None  # socketserver made one
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
            assert self.socket is not None  # the shared one (server_bind)
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

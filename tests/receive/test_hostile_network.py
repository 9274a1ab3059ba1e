"""The DICOM port against hostile or broken clients: half-open and silent connections, floods,
oversized PDU lengths, per-address limits, and node shutdown or death with such clients around.

Raw sockets on 127.0.0.1 speak the upper layer protocol (PS3.8 9.3) by hand; other loopback
addresses (127.0.0.2, ...) stand for other hosts. DCMTK ``echoscu`` is the well-behaved peer.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import struct
import time
from contextlib import contextmanager
from pathlib import Path

import peers
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.receive.scp import StorageSCP

ECHO_BOUND = 2.0  # s each C-ECHO may take under a flood


# -- the protocol by hand ------------------------------------------------------------------------
def _item(item_type: int, data: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(data)) + data


def a_associate_rq(calling: str = "STORESCU", called: str = "DICOM_AI") -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification in implicit VR little endian."""
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    body += _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, b"1.2.840.10008.1.1")
                  + _item(0x40, b"1.2.840.10008.1.2"))
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.3811"))
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def read_pdu(sock: socket.socket, timeout: float) -> tuple[int, bytes] | None:
    """The next PDU's type and body, or None when the peer closes first.

    Raises
    ------
    TimeoutError
        If no whole PDU (and no close) comes within ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    data = b""
    need = 6
    while len(data) < need:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(need - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
        if len(data) == 6 and need == 6:
            need = 6 + struct.unpack(">L", data[2:6])[0]
    return data[0], data[6:]


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def associate(port: int, source: str = "127.0.0.1",
              calling: str = "STORESCU") -> tuple[socket.socket, tuple[int, bytes] | None]:
    """Connect from ``source``, send an A-ASSOCIATE-RQ; the socket and the answer PDU."""
    sock = connect(port, source)
    sock.sendall(a_associate_rq(calling))
    return sock, read_pdu(sock, 10)


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True if the peer closes (EOF or reset, after any PDUs it sends) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def echo(port: int) -> tuple[int, float]:
    t = time.monotonic()
    out = peers.echoscu("127.0.0.1", port, aec="DICOM_AI", aet="STORESCU", timeout=30)
    return out.returncode, time.monotonic() - t


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+) kB", fh.read()).group(1)) * 1024


def _eventually(check, timeout: float = 5.0) -> bool:
    """True as soon as ``check()`` is, False if not within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


# -- an SCP in this process ----------------------------------------------------------------------
@pytest.fixture
def make_scp(tmp_path: Path):
    started: list[StorageSCP] = []

    def make(**node) -> StorageSCP:
        settings = load_settings(
            None,
            node={"ae_title": "DICOM_AI", "port": peers.free_port(), "bind_address": "127.0.0.1",
                  "data_dir": str(tmp_path / f"var{len(started)}"), **node},
            peers=[{"ae_title": "STORESCU", "host": "127.0.0.0/8"}],
        )
        scp = StorageSCP(settings, FileStore(settings.node.data_dir), open_index(settings.database_url))
        scp.start()
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()


def _close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


@pytest.mark.integration
def test_half_open_and_silent_floods_leave_echo_answered_and_are_dropped(make_scp, dcmtk):
    scp = make_scp(association_request_timeout=3)
    port = scp.settings.node.port
    flood: list[socket.socket] = []
    try:
        for _ in range(80):  # 3 bytes of an A-ASSOCIATE-RQ header, then nothing
            s = connect(port)
            s.sendall(b"\x01\x00\x00")
            flood.append(s)
        for i in range(200):  # connect and say nothing
            flood.append(connect(port, f"127.0.0.{2 + i % 4}"))
        # all wait in the gate, none holds an association slot (or a thread)
        assert _eventually(lambda: scp.server.gate.waiting() == 280, 2), scp.server.gate.waiting()
        assert scp.slots.open() == 0
        echoes = [echo(port) for _ in range(5)]
        assert all(code == 0 and took < ECHO_BOUND for code, took in echoes), echoes
        # all are closed by the node after the 3 s
        deadline = time.monotonic() + 3 + 5
        assert all(closed_by_peer(s, max(0.1, deadline - time.monotonic())) for s in flood)
        assert scp.server.gate.waiting() == 0
        assert echo(port)[0] == 0
    finally:
        _close_all(flood)


@pytest.mark.integration
def test_connect_and_close_flood_costs_nothing(make_scp, dcmtk):
    scp = make_scp()
    port = scp.settings.node.port
    t0 = time.monotonic()
    for i in range(100):  # within about a second
        connect(port, f"127.0.0.{2 + i % 8}").close()
    assert time.monotonic() - t0 < 5
    code, took = echo(port)
    assert code == 0 and took < ECHO_BOUND, (code, took)
    for _ in range(50):  # the gate forgets them as soon as it sees the close
        if scp.server.gate.waiting() == 0:
            break
        time.sleep(0.1)
    assert scp.server.gate.waiting() == 0
    assert _eventually(lambda: scp.slots.open() == 0, 2)  # the echo's association ends too


def test_oversized_pdu_is_aborted_before_its_body(make_scp):
    scp = make_scp()
    port = scp.settings.node.port
    gib = 1 << 30
    # before the association: an A-ASSOCIATE-RQ header declaring 1 GiB
    s = connect(port)
    try:
        s.sendall(struct.pack(">BBL", 0x01, 0, gib))
        answer = read_pdu(s, 3)
        assert answer is not None and answer[0] == 0x07, answer  # A-ABORT
        assert answer[1][2:4] == bytes([0x02, 0x06])  # service provider, invalid parameter value
        assert closed_by_peer(s, 3)
    finally:
        s.close()
    # in an association: a P-DATA-TF header declaring 1 GiB, then bytes streamed after it
    s, answer = associate(port)
    try:
        assert answer is not None and answer[0] == 0x02, answer  # A-ASSOCIATE-AC
        before = rss_bytes()
        s.sendall(struct.pack(">BBL", 0x04, 0, gib))
        answer = read_pdu(s, 3)
        assert answer is not None and answer[0] == 0x07, answer
        chunk, sent = bytes(1 << 20), 0
        with pytest.raises(OSError):
            for _ in range(64):
                s.sendall(chunk)
                sent += len(chunk)
        assert sent < 64 << 20
        assert rss_bytes() - before < 16 << 20
    finally:
        s.close()
    assert _eventually(lambda: scp.slots.open() == 0)


def test_unfinished_pdu_in_an_association_is_aborted_within_network_timeout(make_scp):
    scp = make_scp(network_timeout=2)
    port = scp.settings.node.port
    half, answer = associate(port)
    trickle, answer2 = associate(port)
    try:
        assert answer[0] == 0x02 and answer2[0] == 0x02
        t0 = time.monotonic()
        half.sendall(b"\x04\x00\x00")  # half a P-DATA-TF header
        trickle.sendall(struct.pack(">BBL", 0x04, 0, 1000))  # then its body, a byte at a time
        while time.monotonic() - t0 < 6:
            try:
                trickle.sendall(b"\x00")
            except OSError:
                break
            time.sleep(0.25)
        assert closed_by_peer(half, max(0.1, t0 + 4 - time.monotonic()))
        assert closed_by_peer(trickle, max(0.1, t0 + 4 - time.monotonic()))
        assert time.monotonic() - t0 < 4.5  # 2 s, however the bytes trickle
    finally:
        half.close()
        trickle.close()
    assert _eventually(lambda: scp.slots.open() == 0)


@pytest.mark.integration
def test_per_address_and_node_limits_refuse_with_local_limit_exceeded(make_scp, dcmtk, caplog):
    scp = make_scp(max_associations=5, max_associations_per_address=2)
    port = scp.settings.node.port
    caplog.set_level(logging.WARNING)
    held: list[socket.socket] = []
    try:
        for _ in range(2):
            s, answer = associate(port, "127.0.0.2")
            held.append(s)
            assert answer[0] == 0x02, answer
        third, answer = associate(port, "127.0.0.2")
        held.append(third)
        # A-ASSOCIATE-RJ: rejected-transient (2), service provider presentation (3), local limit
        # exceeded (2)
        assert answer == (0x03, bytes([0, 2, 3, 2])), answer
        assert "max_associations_per_address = 2 open from 127.0.0.2" in caplog.text
        assert echo(port)[0] == 0  # others still get in
        assert _eventually(lambda: scp.slots.open() == 2, 2)  # once the echo's has ended
        for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
            s, answer = associate(port, source)
            held.append(s)
            assert answer[0] == 0x02, (source, answer)
        assert scp.slots.open() == 5
        s, answer = associate(port, "127.0.0.6")
        held.append(s)
        assert answer == (0x03, bytes([0, 2, 3, 2])), answer
        assert "max_associations = 5 open" in caplog.text
        held[0].close()  # a slot comes back when its association ends
        assert _eventually(lambda: scp.slots.open() == 4)
        code, took = echo(port)
        assert code == 0, took
    finally:
        _close_all(held)


def test_strangers_are_refused_without_a_thread(make_scp, caplog):
    scp = make_scp()
    admitted = []
    admit = scp.server.admit
    scp.server.gate.admit = lambda *a: (admitted.append(a[1]), admit(*a))
    caplog.set_level(logging.WARNING)
    s, answer = associate(scp.settings.node.port, calling="INTRUDER")
    s.close()
    assert answer == (0x03, bytes([0, 1, 1, 3])), answer  # permanent, service user, calling AE
    assert admitted == []
    assert "calling AE title 'INTRUDER' from 127.0.0.1 is not in [[peers]]" in caplog.text
    s, answer = associate(scp.settings.node.port)
    s.close()
    assert answer[0] == 0x02 and len(admitted) == 1


# -- the node as a process -----------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def _half_open_everywhere(port: int) -> list[socket.socket]:
    """40 connections waiting with half a header, and 4 associations stopped mid-PDU."""
    socks = []
    for _ in range(40):
        s = connect(port)
        s.sendall(b"\x01\x00\x00")
        socks.append(s)
    for _ in range(4):
        s, answer = associate(port)
        assert answer[0] == 0x02, answer
        s.sendall(b"\x04\x00\x00")
        socks.append(s)
    return socks


@contextmanager
def _node_held_half_open(tmp_path):
    """A node with two receiver processes, each holding half-open associations; yields the node
    and its child processes (the worker, receiver 1, multiprocessing's resource tracker)."""
    node = NodeProcess(tmp_path / "node", stable_seconds=600, extra={"node": {"receivers": 2}})
    node.start()
    assert node.wait_for_log("receiver 1 started", 30), node.log_tail()
    socks = _half_open_everywhere(node.port)
    try:
        yield node, _children(node.proc.pid)
    finally:
        _close_all(socks)


@pytest.mark.integration
def test_sigterm_with_half_open_connections_stops_within_bound(tmp_path, dcmtk):
    with _node_held_half_open(tmp_path) as (node, kids):
        t0 = time.monotonic()
        code = node.stop(timeout=30)
        took = time.monotonic() - t0
        assert code == 0 and took < 15, (code, took, node.log_tail())
        assert _eventually(lambda: not any(_alive(k) for k in kids), 5)
        assert _refused(node.port)


@pytest.mark.integration
def test_sigkill_of_the_node_takes_its_processes_with_it(tmp_path, dcmtk):
    with _node_held_half_open(tmp_path) as (node, kids):
        try:
            assert len(kids) >= 2  # the worker and receiver 1 (and the resource tracker)
            os.kill(node.proc.pid, signal.SIGKILL)  # the node alone, not its process group
            node.proc.wait(10)
            assert _eventually(lambda: not any(_alive(k) for k in kids), 5), \
                [open(f"/proc/{k}/cmdline").read() for k in kids if _alive(k)]
            assert _refused(node.port)
        finally:
            node.proc = None


@pytest.mark.integration
def test_sigkill_while_the_node_starts_its_processes(tmp_path):
    """The node dies while its worker and receiver are still starting (before they could look
    at their parent): they must not live on as orphans."""
    node = NodeProcess(tmp_path / "node", stable_seconds=600, extra={"node": {"receivers": 2}})
    spawned: list[int] = []

    def starting() -> bool:
        assert node.proc is not None
        kids = [k for k in _children(node.proc.pid) if b"spawn_main" in _cmdline(k)]
        spawned[:] = kids
        return len(kids) >= 2

    node.start(ready=starting)
    try:
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)
        assert _eventually(lambda: not any(_alive(k) for k in spawned), 5), node.log_tail()
        assert _refused(node.port)
    finally:
        for k in spawned:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
        node.proc = None


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""

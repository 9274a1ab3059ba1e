"""fsync started now and waited for later (dicom_ai.cache.flush): without the interpreter lock
where glibc's POSIX AIO is there, on a thread otherwise; failures reach the waiter."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dicom_ai.cache import flush

glibc = pytest.mark.skipif(flush._aio_library() is None, reason="POSIX AIO of glibc on 64-bit Linux only")


@pytest.fixture
def pool():
    """A pool whose threads are running and idle (a first submit would start one, and wait for
    it with the interpreter lock let go)."""
    with ThreadPoolExecutor(2) as executor:
        for ran in [executor.submit(time.sleep, 0.01) for _ in range(2)]:
            ran.result()
        yield executor


def _hold_the_lock(seconds: float) -> None:
    """Sleep ``seconds`` in a C call that keeps the interpreter lock (a ``ctypes.PyDLL``
    function): no Python thread runs meanwhile, and, unlike Python code, the call cannot be
    asked to let go of the lock."""
    ctypes.PyDLL(None).usleep(int(seconds * 1e6))


def _ended_under_the_lock(path, pool, data: bytes) -> bool:
    """Start the fsync of a file holding ``data``, hold the interpreter lock 0.5 s (no Python
    thread can run meanwhile), and say whether it has ended; then wait for it, which must
    succeed. The switch interval is 100 s from a sleep before the start on, so no thread that
    was already waiting for the lock can take it between the start and the hold."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(100.0)
        try:
            time.sleep(0.05)
            started = flush.start_fsync(fd, pool)
            _hold_the_lock(0.5)
            ended = started.done()
        finally:
            sys.setswitchinterval(interval)
        started.result()
        assert started.done()
        return ended
    finally:
        os.close(fd)


@glibc
def test_the_fsync_runs_while_this_thread_holds_the_interpreter_lock(tmp_path, pool):
    """The fsync has ended by the end of the busy loop, because a C thread of glibc ran it."""
    assert _ended_under_the_lock(tmp_path / "a.dcm", pool, os.urandom(200_000))


def test_the_thread_fallback_waits_for_this_thread(tmp_path, pool, monkeypatch):
    """The contrast to the test above: on a Python thread the same fsync cannot even start."""
    monkeypatch.setattr(flush, "_aio_library", lambda: None)
    assert not _ended_under_the_lock(tmp_path / "a.dcm", pool, b"x" * 1000)


@pytest.mark.parametrize("aio", [True, False], ids=["aio", "thread"])
def test_a_failed_fsync_raises_its_error_when_waited_for(pool, monkeypatch, aio):
    """fsync(2) of a pipe fails with EINVAL; result() raises it, wait() and done() do not."""
    if aio and flush._aio_library() is None:
        pytest.skip("POSIX AIO of glibc on 64-bit Linux only")
    if not aio:
        monkeypatch.setattr(flush, "_aio_library", lambda: None)
    read_end, write_end = os.pipe()
    try:
        started = flush.start_fsync(write_end, pool)
        started.wait()
        assert started.done()
        with pytest.raises(OSError) as raised:
            started.result()
        assert raised.value.errno == 22  # EINVAL
    finally:
        os.close(read_end)
        os.close(write_end)


@glibc
def test_a_forked_child_uses_threads(tmp_path):
    """glibc's AIO threads do not survive fork(2): a forked child falls back to Python threads."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running the parent's cleanup
        os.write(write_end, b"none" if flush._aio_library() is None else b"aio")
        os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 16) == b"none"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert flush._aio_library() is not None  # the parent keeps it

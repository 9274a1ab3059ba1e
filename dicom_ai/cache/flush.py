"""fsync(2) started now and waited for later, without Python's interpreter lock where possible.

A received instance's file must be durable before its success status is sent (PS3.4 B.2.3),
and its fsync should overlap the parsing and checking that follow the write. A Python thread
cannot start that fsync before the parsing thread lets go of the interpreter lock, which pure
Python code does only every switch interval (5 ms), so the flush would begin only when the
receiver waits for it. On Linux with glibc, 64-bit, the fsync is therefore handed to POSIX
asynchronous I/O (``aio_fsync(3)``, POSIX.1-2008), whose worker threads are C threads that
never take the lock; anywhere else, or should ``aio_fsync`` fail, it runs on a Python thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from functools import cache
from typing import Any, Protocol

#: ``sizeof(struct aiocb)`` in glibc on 64-bit Linux (x86-64 and AArch64 alike)
_AIOCB_SIZE = 168
#: offset of ``aio_sigevent.sigev_notify`` in that struct (``aio_sigevent`` at 32, then the
#: 8-byte ``sigev_value`` and the 4-byte ``sigev_signo``)
_SIGEV_NOTIFY_OFFSET = 44
_SIGEV_NONE = 1  # no signal and no thread when the request completes
_SONAMES = {"c": "libc.so.6", "rt": "librt.so.1"}  # glibc's, where find_library finds nothing
_libc: list[Any] = []  # [the C library with aio_* bound] once looked up; [None] if not usable


@cache
def _c_library(name: str) -> Any:
    """The C library ``name`` (``"c"``, ``"rt"``), loaded once, with ``errno`` kept.

    Raises
    ------
    OSError
        If it cannot be loaded.
    """
    return ctypes.CDLL(ctypes.util.find_library(name) or _SONAMES[name], use_errno=True)


def _aio_library() -> Any | None:
    """The C library with ``aio_fsync``, ``aio_error``, ``aio_return`` and ``aio_suspend``
    bound, or None where the ``struct aiocb`` layout above is not known to hold."""
    if not _libc:
        _libc.append(None)
        if sys.platform == "linux" and platform.libc_ver()[0] == "glibc" and ctypes.sizeof(ctypes.c_void_p) == 8:
            for name in ("c", "rt"):  # glibc 2.34 moved the aio functions from librt into libc
                try:
                    lib = _c_library(name)
                    calls = (lib.aio_fsync, lib.aio_error, lib.aio_return, lib.aio_suspend)
                except (OSError, AttributeError):
                    continue
                for call in calls:
                    call.restype = ctypes.c_int
                calls[0].argtypes = (ctypes.c_int, ctypes.c_void_p)
                calls[1].argtypes = (ctypes.c_void_p,)
                calls[2].argtypes = (ctypes.c_void_p,)
                calls[2].restype = ctypes.c_ssize_t
                calls[3].argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
                _libc[0] = lib
                break
    return _libc[0]


def _no_aio_after_fork() -> None:
    # glibc's aio thread pool does not survive fork(): a child would queue requests for idle
    # threads that exist only in its parent, so a forked child uses Python threads
    _libc[:] = [None]


os.register_at_fork(after_in_child=_no_aio_after_fork)


class Flush(Protocol):
    """An fsync under way."""

    def result(self) -> None:
        """Wait for the fsync; raise its :class:`OSError` if it failed."""

    def wait(self) -> None:
        """Wait for the fsync to end, whatever its outcome."""

    def done(self) -> bool:
        """True once the fsync has ended."""


class _AioFsync:
    """An ``aio_fsync(O_SYNC)`` of a descriptor, which must stay open until it has ended."""

    def __init__(self, lib: Any, fd: int) -> None:
        self._lib = lib
        self._cb = ctypes.create_string_buffer(_AIOCB_SIZE)  # zeroed: no offset, priority 0
        struct.pack_into("i", self._cb, 0, fd)
        struct.pack_into("i", self._cb, _SIGEV_NOTIFY_OFFSET, _SIGEV_NONE)
        self._error: int | None = None  # errno once ended (0: done)
        if lib.aio_fsync(os.O_SYNC, self._cb) != 0:
            raise OSError(ctypes.get_errno(), "aio_fsync")

    def wait(self) -> None:
        if self._error is not None:
            return
        lib, cb = self._lib, self._cb
        pointers = (ctypes.c_void_p * 1)(ctypes.addressof(cb))
        while (error := lib.aio_error(cb)) == errno.EINPROGRESS:
            lib.aio_suspend(pointers, 1, None)  # the lock is let go meanwhile; EINTR: ask again
        lib.aio_return(cb)  # frees the request's resources (once, after it ended)
        self._error = error

    def done(self) -> bool:
        return self._error is not None or self._lib.aio_error(self._cb) != errno.EINPROGRESS

    def result(self) -> None:
        self.wait()
        if self._error:
            raise OSError(self._error, f"fsync: {os.strerror(self._error)}")


def _sync_file_range() -> Callable[[int], None]:
    """``fd -> None`` starting the writeback of a file's dirty pages without waiting for it:
    Linux ``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``; elsewhere it does nothing."""
    try:
        call = _c_library("c").sync_file_range
    except (OSError, AttributeError):
        return lambda fd: None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int

    def start(fd: int) -> None:
        call(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE; should it fail, the fsync does all the work

    return start


#: start the writeback of a file (see :func:`_sync_file_range`); fsync(2) still makes it durable
start_writeback = _sync_file_range()


class _ThreadFsync:
    """An fsync on a thread of a pool; the disk starts on the data at once (the thread may
    wait for the interpreter lock before it runs)."""

    def __init__(self, pool: ThreadPoolExecutor, fd: int) -> None:
        start_writeback(fd)
        self._future: Future = pool.submit(os.fsync, fd)

    def wait(self) -> None:
        wait_futures([self._future])

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> None:
        self._future.result()


def start_fsync(fd: int, pool: ThreadPoolExecutor) -> Flush:
    """Start ``fsync(fd)`` and return at once; ``fd`` must stay open until it has ended
    (:meth:`Flush.wait`). It runs without the interpreter lock by ``aio_fsync(3)`` where
    that is known to work (see the module docstring), else on a thread of ``pool``.

    Raises
    ------
    RuntimeError
        If ``pool`` is shut down and ``aio_fsync`` is not used.
    """
    lib = _aio_library()
    if lib is not None:
        try:
            return _AioFsync(lib, fd)
        except OSError:  # e.g. ENOSYS, or EAGAIN: no request can be queued now
            pass
    return _ThreadFsync(pool, fd)

"""Child processes that end with their parent, however the parent ends; and whether the
process that left something behind (a temporary file, a claimed job or delivery) is gone.

The node's receivers and worker, and the worker's decoding processes, call
:func:`die_with_parent` first thing, so no orphan keeps a port, a job or shared memory.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # prctl(2) option, <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when the process ``parent_pid`` ends, however it ends.

    On Linux the kernel then sends this process SIGKILL (prctl ``PR_SET_PDEATHSIG``, prctl(2);
    it fires when the thread that started the process ends, which in the node is the main
    thread). A parent that died before this call (while this process was starting) is caught by
    the check that follows: the process exits at once. Elsewhere only the caller's polling of
    ``os.getppid()`` applies. Call it first thing in a child's entry function.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as exc:
            log.warning("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    if os.getppid() != parent_pid:
        sys.stderr.write(f"parent process {parent_pid} gone before process {os.getpid()} started; exiting\n")
        os._exit(0)


def this_host() -> str:
    """The host name this process records as its own (``socket.gethostname()``)."""
    return socket.gethostname()


def process_gone(host: str, pid: int | None) -> bool:
    """Whether process ``pid`` of ``host`` has certainly ended: True only for this host, when
    no process ``pid`` exists or it is a zombie (ended, not yet reaped). False for another host,
    which only a heartbeat or an age can tell about, and for this process itself."""
    if host != this_host() or pid is None or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"  # state follows "(comm)"
    except (OSError, IndexError):
        return False

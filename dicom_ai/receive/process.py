"""Extra receiver processes: more C-STORE handlers on the same port, past one process's GIL.

The node opens one listening socket (:func:`dicom_ai.receive.scp.open_listener`) and serves it
itself; ``[node] receivers - 1`` spawned processes serve the same socket. The kernel queues
connections on it and whichever process is free accepts the next, so concurrent associations
spread over the processes. Every process writes its own instances (atomically, durably) and
indexes them in the shared index (SQLite in WAL mode serialises the short write transactions).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import socket
from typing import Any

from dicom_ai.config import Settings

log = logging.getLogger(__name__)


def receiver_main(settings_json: str, listening_socket: socket.socket, stop: Any, number: int) -> None:
    """Entry point of a receiver process: serve ``listening_socket`` until ``stop`` is set or
    the node process is gone."""
    from dicom_ai.cache.db import open_index
    from dicom_ai.cache.store import FileStore
    from dicom_ai.logconf import setup_logging
    from dicom_ai.receive.scp import StorageSCP

    settings = Settings.model_validate_json(settings_json)
    setup_logging()
    scp = StorageSCP(settings, FileStore(settings.node.data_dir), open_index(settings.database_url))
    scp.start(listening_socket)
    log.info("receiver %d started (pid %d)", number, os.getpid())
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("node process gone; receiver exits")
            break
    scp.stop()


def start_receiver(settings: Settings, listening_socket: socket.socket, number: int) -> tuple[mp.Process, Any]:
    """Spawn receiver process ``number`` on ``listening_socket``; returns it and its stop event."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(
        target=receiver_main,
        args=(settings.model_dump_json(), listening_socket, stop, number),
        name=f"dicom-ai-receiver-{number}",
        daemon=False,
    )
    proc.start()
    return proc, stop

"""Extra receiver processes: more C-STORE handlers on the same port, past one process's GIL.

The node opens one listening socket (:func:`dicom_ai.receive.transport.open_listener`) and serves it
itself; ``[node] receivers - 1`` spawned processes serve the same socket. The kernel queues
connections on it and whichever process is free accepts the next, so concurrent associations
spread over the processes. Every process writes its own instances (atomically, durably) and
indexes them in the shared index (SQLite in WAL mode serialises the short write transactions).
The node's ``[node] max_associations`` and ``max_associations_per_address`` are counted across
all of them (:class:`~dicom_ai.receive.transport.AssociationSlots`). A receiver ends with the node
however the node ends (:func:`die_with_parent`), so no orphan keeps answering on the port.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import socket
from multiprocessing.process import BaseProcess
from typing import Any

from dicom_ai.config import Settings
from dicom_ai.lifetime import die_with_parent

log = logging.getLogger(__name__)

PARENT_POLL = 0.5  # s between checks that the node process is still there (besides prctl)


def receiver_main(settings_json: str, listening_socket: socket.socket, stop: Any, number: int,
                  parent_pid: int | None = None, slots: Any = None, released: Any = None) -> None:
    """Entry point of a receiver process: serve ``listening_socket`` until ``stop`` is set or
    the node process ``parent_pid`` is gone (:func:`die_with_parent`, and a check every
    ``PARENT_POLL`` s). Associations count in ``slots``, the node's
    :class:`~dicom_ai.receive.transport.AssociationSlots` (row ``number``, cleared first: a
    receiver this one replaces took its associations with it). The process exits as soon as
    its SCP has stopped, which is bounded (:meth:`StorageSCP.stop`). ``released`` (an event of
    the node's) is set after each A-RELEASE that ended a series' transfer."""
    parent = parent_pid if parent_pid is not None else os.getppid()
    die_with_parent(parent)
    # a second of imports (pynetdicom, sqlalchemy): only once the node may take this process along
    from dicom_ai.cache.db import receiver_index  # deferred: after die_with_parent
    from dicom_ai.cache.store import FileStore  # deferred: after die_with_parent
    from dicom_ai.logconf import setup_logging  # deferred: after die_with_parent
    from dicom_ai.receive.scp import StorageSCP  # deferred: after die_with_parent

    settings = Settings.model_validate_json(settings_json)
    setup_logging()
    if slots is not None:
        slots = slots.for_process(number)
        slots.clear()
    scp = StorageSCP(settings, FileStore(settings.node.data_dir), receiver_index(settings.database_url),
                     on_release=released.set if released is not None else None)
    scp.start(listening_socket, slots=slots)
    log.info("receiver %d started (pid %d)", number, os.getpid())
    while not stop.wait(PARENT_POLL):
        if os.getppid() != parent:
            log.warning("node process gone; receiver exits")
            break
    scp.stop()
    log.info("receiver %d stopped", number)
    logging.shutdown()
    os._exit(0)  # no waiting on threads a stuck peer might still hold


def start_receiver(settings: Settings, listening_socket: socket.socket, number: int,
                   slots: Any = None, released: Any = None) -> tuple[BaseProcess, Any]:
    """Spawn receiver process ``number`` on ``listening_socket`` counting its associations in
    ``slots`` (the node's :class:`~dicom_ai.receive.transport.AssociationSlots`) and setting
    ``released`` (a spawn-context event) after each A-RELEASE that ended a series' transfer;
    returns it and its stop event. The process ends when the calling thread's process ends,
    however it ends (:func:`die_with_parent`)."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(
        target=receiver_main,
        args=(settings.model_dump_json(), listening_socket, stop, number, os.getpid(), slots, released),
        name=f"dicom-ai-receiver-{number}",
        daemon=False,
    )
    proc.start()
    return proc, stop

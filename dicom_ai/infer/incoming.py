"""Reading a series while it arrives: the worker's idle time during a transfer spent on the files
the receiver has already stored, so that the volume is nearly assembled when the sender releases
the association.

:class:`IncomingReader` is a thread of the worker process. While the worker has no job (its
loop pauses the reader around each job and read-ahead, :meth:`IncomingReader.paused`), it reads
the image files of the series still being received (index state ``receiving``, an instance
within the last :data:`RECENT_SECONDS`) of a modality an enabled model takes, each once, with
:func:`dicom_ai.infer.volume.read_slice`: header and decoded pixels. :meth:`IncomingReader.take`
hands those of one series to :func:`dicom_ai.infer.volume.load_series` (``known``), keyed by
each instance's path, size and time of receipt: an instance received again since it was read
(same path, new file) is read again there, never taken from here.

The thread runs at a lower CPU priority than the receivers (``nice`` +:data:`NICE` for this
thread only, Linux): on a loaded node, the receiving of instances goes first. It keeps at most
:data:`MAX_BYTES` of pixels (the oldest series leaves first; a series that alone would pass it
is read at its job, as without this reader), and forgets a series no instance of which arrived
in the last :data:`RECENT_SECONDS` and that no job took.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Instance, Series, utcnow
from dicom_ai.cache.states import SeriesState
from dicom_ai.cache.store import FileStore
from dicom_ai.infer.volume import read_slice

log = logging.getLogger(__name__)

#: Most bytes of decoded pixels kept, all series together (1 GiB: 1,000 slices of 512 x 512).
MAX_BYTES = 1 << 30
#: A series counts as arriving while an instance of it arrived this recently, s.
RECENT_SECONDS = 60.0
#: How often the index is asked for new instances while nothing is left to read, s.
POLL_SECONDS = 0.2
#: Files read between two looks at the index.
BATCH = 32
#: The reader thread's nice value above the process's (lower priority).
NICE = 10

#: An instance's stamp: (size in bytes, time of receipt), as the index holds them.
Stamp = tuple[int, dt.datetime]


class IncomingReader:
    """The thread that reads the series being received (see the module text).

    Parameters
    ----------
    sessions:
        The index.
    store:
        The file store the instances' paths are relative to.
    modalities:
        The modalities the enabled models take, asked again every 30 s.
    """

    def __init__(self, sessions: sessionmaker, store: FileStore, modalities: Callable[[], set[str]]) -> None:
        self.sessions, self.store, self._modalities = sessions, store, modalities
        self._cache_lock = threading.Lock()
        self._work = threading.Lock()  # held while one file is read
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        # series id -> {relative path: (stamp, (header, pixels))}, oldest series first
        self._series: OrderedDict[int, dict[str, tuple[Stamp, tuple[Any, np.ndarray]]]] = OrderedDict()
        self._seen: dict[int, int] = {}  # series id -> highest Instance id looked at
        self._touched: dict[int, float] = {}  # series id -> time.monotonic() of its last file
        self._full: set[int] = set()  # series left to their job: they alone would pass MAX_BYTES
        self._bytes = 0
        self._wanted: tuple[float, set[str]] = (-1e9, set())
        self._thread = threading.Thread(target=self._run, name="incoming-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._idle.set()
        self._thread.join(5)

    @property
    def nbytes(self) -> int:
        """Bytes of decoded pixels kept now."""
        return self._bytes

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing is read (neither a file nor the index) inside the ``with`` block: it starts
        once the file being read, if any, is done (tens of ms at most); e.g. no other thread
        of this process is inside a read when the loading of a series forks its decoders."""
        self._idle.clear()
        with self._work:
            pass
        try:
            yield
        finally:
            self._idle.set()

    def take(self, series_id: int, stamps: dict[str, Stamp]) -> dict[Path, tuple[Any, np.ndarray]]:
        """The files of series ``series_id`` read so far whose stamp is the one ``stamps``
        (relative path -> (size, time of receipt), as the index holds them now) gives, by
        absolute path, for :func:`~dicom_ai.infer.volume.load_series`; the series is forgotten
        here (its volume holds them now)."""
        with self._cache_lock:
            read = self._forget(series_id)
        return {self.store.abspath(rel): entry for rel, (stamp, entry) in read.items() if stamps.get(rel) == stamp}

    def _forget(self, series_id: int) -> dict[str, tuple[Stamp, tuple[Any, np.ndarray]]]:
        read = self._series.pop(series_id, {})
        self._bytes -= sum(entry[1].nbytes for _, entry in read.values())
        self._touched.pop(series_id, None)
        return read

    def _run(self) -> None:
        try:  # this thread only (Linux: a thread id is a process id for setpriority)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        except (AttributeError, OSError) as exc:
            log.debug("incoming reader keeps the process's priority: %s", exc)
        while not self._stop.is_set():
            if not self._idle.wait(1.0):
                continue
            with self._work:  # the index is not asked inside paused() either
                if not self._idle.is_set():
                    continue
                try:
                    todo = self._todo()
                except Exception as exc:  # noqa: BLE001 - the index away: the jobs read the files
                    log.debug("incoming reader: index not read: %s", exc)
                    todo = []
            if not todo:
                self._stop.wait(POLL_SECONDS)
                continue
            for series_id, instance_id, rel, stamp in todo:
                with self._work:
                    if not self._idle.is_set() or self._stop.is_set():
                        break
                    self._read(series_id, instance_id, rel, stamp)

    def _read(self, series_id: int, instance_id: int, rel: str, stamp: Stamp) -> None:
        try:
            entry = read_slice(self.store.abspath(rel))
        except Exception as exc:  # noqa: BLE001 - the job reads the file and says why
            log.debug("incoming reader: %s not read: %s", rel, exc)
            entry = None
        with self._cache_lock:
            self._seen[series_id] = max(self._seen.get(series_id, 0), instance_id)
            if entry is None:
                return
            size = entry[1].nbytes
            while self._bytes + size > MAX_BYTES and any(s != series_id for s in self._series):
                self._forget(next(s for s in self._series if s != series_id))
            if self._bytes + size > MAX_BYTES:
                self._full.add(series_id)
                self._forget(series_id)
                log.info("series %d: more than %d MiB of pixels; read at its job", series_id, MAX_BYTES >> 20)
                return
            files = self._series.setdefault(series_id, {})
            old = files.get(rel)
            if old is not None:
                self._bytes -= old[1][1].nbytes
            files[rel] = (stamp, entry)
            self._bytes += size
            self._touched[series_id] = time.monotonic()

    def _wanted_modalities(self) -> set[str]:
        at, wanted = self._wanted
        if time.monotonic() - at > 30.0:
            wanted = set(self._modalities())
            self._wanted = (time.monotonic(), wanted)
        return wanted

    def _todo(self) -> list[tuple[int, int, str, Stamp]]:
        """Up to :data:`BATCH` instances not looked at yet, of the series being received, the
        most recently active first: (series id, instance id, relative path, stamp)."""
        now = time.monotonic()
        with self._cache_lock:
            for series_id in [s for s, at in self._touched.items() if now - at > RECENT_SECONDS]:
                self._forget(series_id)
        wanted = self._wanted_modalities()
        if not wanted:
            return []
        since = utcnow() - dt.timedelta(seconds=RECENT_SECONDS)
        out: list[tuple[int, int, str, Stamp]] = []
        with self.sessions() as session:
            arriving = session.execute(
                select(Series.id, Series.modality).where(Series.state == SeriesState.RECEIVING,
                                                         Series.last_received_at >= since)
                .order_by(Series.last_received_at.desc()).limit(4)).all()
            ids = {series_id for series_id, _ in arriving}
            with self._cache_lock:  # what is no longer arriving: forgotten (taken or evicted)
                self._seen = {s: i for s, i in self._seen.items() if s in ids or s in self._series}
                self._full &= ids
            for series_id, modality in arriving:
                if modality not in wanted or series_id in self._full:
                    continue
                rows = session.execute(
                    select(Instance.id, Instance.path, Instance.size, Instance.received_at)
                    .where(Instance.series_fk == series_id, Instance.id > self._seen.get(series_id, 0))
                    .order_by(Instance.id).limit(BATCH - len(out))).all()
                out += [(series_id, i, path, (size, at)) for i, path, size, at in rows]
                if len(out) >= BATCH:
                    break
        return out

"""The file cache: durable, atomic writes under ``data_dir``.

Layout: ``instances/<Study UID>/<Series UID>/<SOP Instance UID>.dcm`` and
``results/<job id>/<kind>.dcm``; ``incoming/`` holds received files written ahead under
temporary names (:meth:`FileStore.write_ahead`) until they are renamed into place, and a few
empty ones made ahead for the next (:data:`SPARE_FILES`). UIDs are
validated (PS3.5 §9.1: digits and dots, at most 64 characters) before they become part of a
path, so no sender can write outside ``data_dir``.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from dicom_ai.cache.flush import Flush, start_fsync
from dicom_ai.lifetime import process_gone, this_host

log = logging.getLogger(__name__)

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TMP_PREFIX = ".tmp-"
#: s after which a temporary file whose writer cannot be seen to have ended (a process on
#: another host sharing the store, or one still running) counts as left behind: far longer
#: than any one instance takes to arrive
STALE_TEMPORARY_SECONDS = 3600.0
#: seconds a free-space reading is used (less what was staged since) before the file system is
#: asked again
FREE_SPACE_MAX_AGE = 1.0
#: threads per store that fsync files written ahead (one per association writing at once)
FLUSH_THREADS = 8
#: empty temporary files a store keeps made ahead in ``incoming/`` for
#: :meth:`FileStore.write_ahead`, so a received instance is written at once: creating a file
#: costs a directory update, and right after the previous instance's flushes it is slow
SPARE_FILES = 2
#: how a spare's temporary name ends (``.tmp-<pid>@<host>@<n>-spare``)
SPARE_SUFFIX = "-spare"
_tmp_ids = itertools.count(1)
_prefix: list = [0, ""]  # [pid, temporary-name prefix] of this process


class InvalidUID(ValueError):
    """A UID that is not a valid UI value (PS3.5 §9.1)."""


def check_uid(uid: str, what: str = "UID") -> str:
    """Return ``uid`` stripped of padding if it is a valid UI value, else raise :class:`InvalidUID`."""
    uid = (uid or "").strip().rstrip("\x00")
    if not uid or len(uid) > 64 or not UID_RE.match(uid):
        raise InvalidUID(f"{what} {uid[:80]!r} is not a valid UID (PS3.5 9.1)")
    return uid


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename in it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_prefix() -> str:
    """``.tmp-<pid>@<host>@``: a temporary file names its writer, so a process sharing the store
    (on another host, or a second node) can tell a file being written from one left by a crash."""
    pid = os.getpid()
    if _prefix[0] != pid:  # once per process (a forked child has its own pid)
        _prefix[:] = [pid, f"{TMP_PREFIX}{pid}@{this_host()}@"]
    return str(_prefix[1])


def unused_spare(path: Path) -> bool:
    """True for a spare temporary file (:data:`SPARE_FILES`) that holds nothing yet: made
    ahead by a store that is running, it is no instance left half-written."""
    try:
        return path.name.endswith(SPARE_SUFFIX) and path.stat().st_size == 0
    except FileNotFoundError:
        return False


def temporary_writer(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made the temporary file ``name``; None for a name that
    does not say (written before names carried it)."""
    pid, sep, rest = name[len(TMP_PREFIX):].partition("@")
    host, sep2, _ = rest.partition("@")
    return (host, int(pid)) if sep and sep2 and pid.isdigit() else None


@contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """Yield a temporary file beside ``dest``; on success fsync it, rename it to ``dest`` and
    fsync the folder; on any error remove it and leave ``dest`` untouched."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(), dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def atomic_write(dest: Path, data: bytes | memoryview) -> int:
    """Write ``data`` to ``dest`` atomically and durably: temporary name, fsync, rename, fsync dir.

    Returns the number of bytes written. On any error no file is left behind and an existing
    ``dest`` is untouched.
    """
    with _atomic_file(dest) as fh:
        fh.write(data)
    return len(data)


class Staged:
    """A file written durably under a temporary name beside its destination, not yet in place
    (:meth:`FileStore.stage`). :meth:`place` renames it into place (atomic), :meth:`sync` makes
    the rename durable, :meth:`discard` removes it unless placed. A crash before the rename
    leaves only a temporary name, which :meth:`FileStore.remove_stale_temporaries` sweeps."""

    def __init__(self, tmp: Path, dest: Path, size: int) -> None:
        self.tmp, self.dest, self.size = tmp, dest, size
        self.placed = False

    def place(self) -> None:
        """Rename the file to its destination, replacing a file there (atomic: never seen
        half-written); idempotent."""
        if not self.placed:
            try:
                os.replace(self.tmp, self.dest)
            except FileNotFoundError:  # a file written ahead (Pending) goes to a new folder
                if not self.tmp.exists():
                    raise
                self.dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.tmp, self.dest)
            self.placed = True

    def sync(self) -> None:
        """fsync the destination folder, so the rename survives a power loss."""
        if self.placed:
            fsync_dir(self.dest.parent)

    def discard(self) -> None:
        """Remove the temporary file, if it was not placed."""
        if not self.placed:
            self.tmp.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes | memoryview) -> int:
    """write(2) all of ``data`` to ``fd`` (one call unless the kernel takes less); its size."""
    view = memoryview(data).cast("B")
    written = 0
    while written < len(view):
        written += os.write(fd, view[written:])
    return len(view)


class Pending:
    """A file written under a temporary name by :meth:`FileStore.write_ahead`, not yet durable
    while ``flushing`` (its ``fsync(2)`` under way, :func:`~dicom_ai.cache.flush.start_fsync`;
    or None) runs.

    :meth:`staged` waits for its fsync (or does it) and gives it a destination (a
    :class:`Staged`, not yet in place), once; :meth:`discard` removes it unless it was staged.
    A crash leaves only a temporary name, which :meth:`FileStore.remove_stale_temporaries`
    sweeps.
    """

    def __init__(self, fd: int, tmp: Path, size: int, flushing: Flush | None = None) -> None:
        self._fd: int | None = fd
        self.tmp, self.size = tmp, size
        self._flushing = flushing

    @property
    def used(self) -> bool:
        """True once :meth:`staged` or :meth:`discard` took the file."""
        return self._fd is None

    def _close(self) -> int:
        fd, self._fd = self._fd, None
        assert fd is not None, "a Pending file is staged or discarded once"
        return fd

    def _flushed(self, fd: int) -> None:
        """The file's fsync: the outcome of the one under way, or the call itself when none is."""
        if self._flushing is None:
            os.fsync(fd)
        else:
            self._flushing.result()

    def staged(self, dest: Path) -> Staged:
        """Wait until the file is durable (fsync) and return it as a :class:`Staged` for ``dest``.

        Raises
        ------
        OSError
            If the fsync fails (the temporary file is removed then).
        """
        fd = self._close()
        try:
            self._flushed(fd)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return Staged(self.tmp, dest, self.size)

    def discard(self) -> None:
        """Remove the temporary file, unless :meth:`staged` took it (after its fsync ended, so
        the descriptor is not closed under it)."""
        if not self.used:
            fd = self._close()
            try:
                if self._flushing is not None:
                    self._flushing.wait()
            finally:
                os.close(fd)
                self.tmp.unlink(missing_ok=True)


def dataset_offset(data: bytes | memoryview) -> int:
    """Where the data set starts in a DICOM file (PS3.10 7.1: 128-byte preamble, ``DICM``, File
    Meta Information whose group length (0002,0000) is its first element); 0 for a stream in
    another form."""
    head = bytes(data[128:144])
    if head[:4] != b"DICM" or head[4:10] != b"\x02\x00\x00\x00UL":
        return 0
    return 144 + int.from_bytes(head[12:16], "little")


def same_dataset(path: Path, data: bytes | memoryview) -> bool:
    """True when the file at ``path`` holds the same data set as ``data``, byte for byte (the File
    Meta Information, which the receiver makes, is left out); False too when it cannot be read."""
    try:
        stored = path.read_bytes()
    except OSError:
        return False
    return memoryview(stored)[dataset_offset(stored):] == memoryview(data)[dataset_offset(data):]


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy a file atomically and durably (see :func:`atomic_write`)."""
    with _atomic_file(dest) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


class FileStore:
    """Paths and writes under one ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._free = 0  # bytes free at the last reading
        self._free_at = float("-inf")  # time.monotonic() of that reading
        self._staged_since = 0  # bytes staged since
        self._flusher: ThreadPoolExecutor | None = None  # made by the first write_ahead
        self._spares: queue.SimpleQueue[tuple[int, Path]] = queue.SimpleQueue()  # (fd, path)
        self._spare_lock = threading.Lock()
        self._refilling = False  # a flusher thread is making spares
        self._spares_closed = False  # close_spares was called

    def instance_relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Relative path of an instance; raises :class:`InvalidUID` for a bad UID."""
        parts = (
            check_uid(study_uid, "Study Instance UID"),
            check_uid(series_uid, "Series Instance UID"),
            check_uid(sop_uid, "SOP Instance UID") + ".dcm",
        )
        return "/".join(("instances",) + parts)

    def result_relpath(self, job_id: int, kind: str, number: int | None = None) -> str:
        """``results/<job>/<kind>.dcm``, or ``results/<job>/<kind>/<number>.dcm`` for a
        result of several instances (one per image)."""
        if number is None:
            return f"results/{int(job_id)}/{kind.lower()}.dcm"
        return f"results/{int(job_id)}/{kind.lower()}/{int(number):05d}.dcm"

    def abspath(self, relpath: str) -> Path:
        return self.root / relpath

    def write(self, relpath: str, data: bytes | memoryview) -> int:
        return atomic_write(self.abspath(relpath), data)

    def stage(self, relpath: str, data: bytes | memoryview) -> Staged:
        """Write ``data`` durably under a temporary name beside ``relpath`` (see :class:`Staged`).

        Raises
        ------
        OSError
            If it cannot be written (no temporary file is left then).
        """
        dest = self.abspath(relpath)
        fd, tmp = self._create_temporary(dest)
        return self._fill(fd, tmp, data).staged(dest)

    def write_ahead(self, data: bytes | memoryview) -> Pending:
        """Write ``data`` under a temporary name in ``incoming/``, before its destination is
        known, and make it durable (``fsync(2)``, started at once and run without the
        interpreter lock: :func:`~dicom_ai.cache.flush.start_fsync`, falling back to
        :data:`FLUSH_THREADS` threads per store); :meth:`Pending.staged` waits for it. The disk
        then works while the receiver parses and checks the data set, instead of after. The
        file is one of the store's spares (:data:`SPARE_FILES`, made again on a flushing
        thread), or a new one when none is left.

        Raises
        ------
        OSError
            If it cannot be written (no temporary file is left then).
        """
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(FLUSH_THREADS, thread_name_prefix="fsync")
        fd, tmp = self._take_spare() or self._create_temporary(self.root / "incoming" / "instance.dcm")
        with self._spare_lock:
            refill = not (self._refilling or self._spares_closed)
            self._refilling |= refill
        if refill:
            self._flusher.submit(self._make_spares)
        return self._fill(fd, tmp, data, self._flusher)

    def _take_spare(self) -> tuple[int, Path] | None:
        """A spare temporary file (descriptor, path), or None when none is left. A spare
        removed meanwhile (another node sharing the store swept it as stale) is dropped."""
        while True:
            try:
                fd, tmp = self._spares.get_nowait()
            except queue.Empty:
                return None
            if os.fstat(fd).st_nlink > 0:
                return fd, tmp
            os.close(fd)

    def _make_spares(self) -> None:
        """Make spare temporary files until there are :data:`SPARE_FILES` (on a flushing
        thread); a failure leaves fewer, and :meth:`write_ahead` makes its file itself."""
        try:
            while self._spares.qsize() < SPARE_FILES:
                fd, tmp = self._create_temporary(self.root / "incoming" / SPARE_SUFFIX[1:])
                with self._spare_lock:
                    if not self._spares_closed:
                        self._spares.put((fd, tmp))
                        continue
                os.close(fd)
                tmp.unlink(missing_ok=True)
                return
        except OSError as exc:
            log.debug("no spare temporary file made in %s: %s", self.root / "incoming", exc)
        finally:
            with self._spare_lock:
                self._refilling = False

    def close_spares(self) -> None:
        """Remove the unused spare temporary files, and make no more (when the store stops
        receiving; :meth:`write_ahead` then makes each file itself)."""
        with self._spare_lock:
            self._spares_closed = True
        while (spare := self._take_spare()) is not None:
            os.close(spare[0])
            spare[1].unlink(missing_ok=True)

    def _fill(self, fd: int, tmp: Path, data: bytes | memoryview,
              flusher: ThreadPoolExecutor | None = None) -> Pending:
        """Write ``data`` to the new temporary file ``fd`` (at ``tmp``); given a ``flusher``,
        start its fsync (:func:`~dicom_ai.cache.flush.start_fsync`, on a thread of
        ``flusher`` where it falls back; else :meth:`Pending.staged` does it). On an error the
        file is closed and removed."""
        try:
            size = _write_all(fd, data)
            flushing = None
            if flusher is not None:
                flushing = start_fsync(fd, flusher)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._staged_since += size
        return Pending(fd, tmp, size, flushing)

    def _create_temporary(self, dest: Path) -> tuple[int, Path]:
        """Create a new file, mode 0600, under a temporary name beside ``dest`` (its folder made
        when missing); returns its descriptor and path. Names are this process's (pid and a
        counter), so one ``open(2)`` normally does it."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for _attempt in range(100):
            tmp = dest.parent / f"{_temporary_prefix()}{next(_tmp_ids)}-{dest.name}"
            try:
                return os.open(tmp, flags, 0o600), tmp
            except FileNotFoundError:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:  # left by an earlier process with this pid
                continue
        raise FileExistsError(f"no free temporary name beside {dest}")

    def free_bytes(self) -> int:
        """Bytes free on the file system of ``data_dir``: a reading at most
        :data:`FREE_SPACE_MAX_AGE` s old, less what this store staged since."""
        now = time.monotonic()
        if now - self._free_at > FREE_SPACE_MAX_AGE:
            self._free, self._free_at, self._staged_since = shutil.disk_usage(self.root).free, now, 0
        return self._free - self._staged_since

    def remove_stale_temporaries(self, stale_after: float = STALE_TEMPORARY_SECONDS) -> int:
        """Delete temporary files left by a crash (never indexed); returns how many.

        A file is left behind when its writer (named in the file name) was a process of this
        host that has ended (:func:`~dicom_ai.lifetime.process_gone`), when the name does not
        say, or when it was last written more than ``stale_after`` s ago. A file another host
        sharing the store is writing now is kept, and so is one this process is writing, and
        an unused spare (:data:`SPARE_FILES`) of a running process of this host."""
        n = 0
        now = time.time()
        for tmp in self.root.rglob(TMP_PREFIX + "*"):
            writer = temporary_writer(tmp.name)
            if writer is not None and not process_gone(*writer):
                if writer[0] == this_host() and unused_spare(tmp):
                    continue  # a running receiver's spare, however long it has waited
                try:
                    if now - tmp.stat().st_mtime < stale_after:
                        continue
                except FileNotFoundError:  # its writer renamed or removed it meanwhile
                    continue
            tmp.unlink(missing_ok=True)
            n += 1
        return n

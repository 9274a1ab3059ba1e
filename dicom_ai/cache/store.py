"""The file cache: durable, atomic writes under ``data_dir``.

Layout: ``instances/<Study UID>/<Series UID>/<SOP Instance UID>.dcm`` and
``results/<job id>/<kind>.dcm``. UIDs are validated (PS3.5 §9.1: digits and dots, at most 64
characters) before they become part of a path, so no sender can write outside ``data_dir``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
TMP_PREFIX = ".tmp-"


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


@contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """Yield a temporary file beside ``dest``; on success fsync it, rename it to ``dest`` and
    fsync the folder; on any error remove it and leave ``dest`` untouched."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=dest.parent)
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


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy a file atomically and durably (see :func:`atomic_write`)."""
    with _atomic_file(dest) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)


class FileStore:
    """Paths and writes under one ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.root.mkdir(parents=True, exist_ok=True)

    def instance_relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Relative path of an instance; raises :class:`InvalidUID` for a bad UID."""
        parts = (
            check_uid(study_uid, "Study Instance UID"),
            check_uid(series_uid, "Series Instance UID"),
            check_uid(sop_uid, "SOP Instance UID") + ".dcm",
        )
        return "/".join(("instances",) + parts)

    def result_relpath(self, job_id: int, kind: str) -> str:
        return f"results/{int(job_id)}/{kind.lower()}.dcm"

    def abspath(self, relpath: str) -> Path:
        return self.root / relpath

    def write(self, relpath: str, data: bytes | memoryview) -> int:
        return atomic_write(self.abspath(relpath), data)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by a crash (never indexed); returns how many."""
        n = 0
        for tmp in self.root.rglob(TMP_PREFIX + "*"):
            tmp.unlink(missing_ok=True)
            n += 1
        return n

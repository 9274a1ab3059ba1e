"""What making an instance durable costs on this disk, without DICOM or Python parsing (a
measurement).

Writes ``--files`` files of a CT slice's size (530 kB, random bytes) with 1 and 4 threads (the
system calls release the GIL, so the threads wait on the disk together, as associations do), in
three ways, in the same run:

* **write + fdatasync**: the file at its final name, flushed: what Orthanc does with
  ``SyncStorageArea`` (seen with ``strace -f -e trace=fsync,fdatasync,rename`` on Orthanc 1.10:
  one fdatasync per instance, no rename, no directory fsync);
* **dicom-ai**: the receiver's sequence: a temporary name, write, fsync, rename to the final
  name, fsync of the folder (an index commit with ``synchronous=NORMAL`` adds no flush);
* **dicom-ai with a flushed index commit**: the same plus an fsync'd 48 kB append, which is
  what an SQLite ``synchronous=FULL`` commit of one instance's rows adds (12 WAL pages).

Prints files/s and the ratio to the first. Put ``--tmp`` on the disk the node's ``data_dir``
would use: on tmpfs the flushes cost nothing.

    python benchmarks/durable_write.py [--files 275] [--tmp /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from dicom_ai.cache.store import fsync_dir

SIZE = 530_000  # bytes, one 512 x 512 CT slice with its header


def write_files(mode: str, folder: Path, thread: int, n: int, data: bytes) -> None:
    """Make ``n`` files durable in ``folder`` the way ``mode`` says (see the module docstring)."""
    for i in range(n):
        dest = folder / f"{thread}-{i}.dcm"
        if mode == "write + fdatasync":
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, data)
            os.fdatasync(fd)
            os.close(fd)
            continue
        tmp = folder / f".tmp-{thread}-{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, dest)
        fsync_dir(folder)
        if mode == "dicom-ai with a flushed index commit":
            with open(folder / f"wal-{thread}", "ab") as wal:
                wal.write(b"\0" * 4096 * 12)
                wal.flush()
                os.fsync(wal.fileno())


MODES = ("write + fdatasync", "dicom-ai", "dicom-ai with a flushed index commit")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=275)
    ap.add_argument("--tmp", type=Path, default=None)
    args = ap.parse_args()
    data = os.urandom(SIZE)
    root = Path(tempfile.mkdtemp(prefix="dicom-ai-durable-", dir=args.tmp))
    try:
        print(f"{args.files} files of {SIZE} bytes in {root}")
        print(f"{'how':38s} {'threads':>7s} {'files/s':>9s} {'ratio':>6s}")
        for threads in (1, 4):
            first = None
            for mode in MODES:
                folder = root / "series"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                per = args.files // threads
                workers = [threading.Thread(target=write_files, args=(mode, folder, t, per, data))
                           for t in range(threads)]
                t0 = time.perf_counter()
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                rate = per * threads / (time.perf_counter() - t0)
                first = first or rate
                print(f"{mode:38s} {threads:7d} {rate:9.1f} {rate / first:6.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Flood resistance: C-ECHO latency and a 51-slice transfer under hostile connections, dicom-ai
beside Orthanc (a measurement).

Each receiver is started once, fresh and empty, and measured under 0, 100 and 500 hostile
connections (``--levels``), one level after another:

* **dicom-ai**: ``dicom-ai serve`` via ``tests/nodeproc.NodeProcess`` with its defaults
  (``receivers`` one per core, at most 4; ``association_request_timeout`` 10 s;
  ``stable_seconds`` 3600 so no inference job runs during the measurement);
* **Orthanc**: ``peers.Orthanc`` (the Debian package; ``DicomScpTimeout`` 30 s as configured
  there, other settings Orthanc's defaults).

Each is started, must answer C-ECHO, and its process tree must be idle (``ingest.wait_idle``)
before the first level.

The hostile connections come from 127.0.0.2-127.0.0.17 (hosts no ``[[peers]]`` entry names), half
of them **half-open** (3 bytes of an A-ASSOCIATE-RQ header, then nothing) and half **silent**
(connected, nothing sent). The flooder keeps their number up: a connection the receiver closes is
opened again at once (non-blocking connects from one thread; a connect that has not completed
in 3 s is retried). The measurement starts when the level is reached (or after 15 s, with the
number held reported in ``held``).

Under each level: ``--echoes`` sequential DCMTK ``echoscu`` runs (TCP_NODELAY=1; ``-to/-ta/-td``
5 s, 8 s in all; a failed or timed-out one counts as 8 s in the percentiles and in ``fail``),
p50 and p95 of their wall time (process start included, alike for both receivers; after 3
failures in a row the level's remaining echoes count as failed without being run); then one
DCMTK ``storescu`` of the first 51 slices of the series (by file name; one association; 120 s
at most), its wall time, checked to have succeeded. The series is the repository's demo
LIDC-IDRI-0314 chest CT (``demo/ct_chest_LIDC-IDRI-0314/image``, JPEG-LS lossless, so
``storescu -xt``) unless ``--series`` names another folder. The same 51 instances are sent at
every level: both receivers take an identical instance again as success.

The table gives, per receiver and level, the echo p50 / p95 in ms, failed echoes, the transfer
time, the hostile connections held and how many the receiver closed during the level (each
closed one was reopened); then dicom-ai's values divided by Orthanc's (below 1: dicom-ai
faster). Loopback only; the machine's other load shows in the numbers.

    python benchmarks/flood.py [--levels 0,100,500] [--echoes 20] [--series DIR] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import ingest  # noqa: E402  (benchmarks/ is this script's folder)
import peers  # noqa: E402

HOST = "127.0.0.1"
SENDER_AET = "STORESCU"  # the calling AE title NodeProcess allows
DEMO_SERIES = REPO / "demo" / "ct_chest_LIDC-IDRI-0314" / "image"
SLICES = 51
ECHO_LIMIT = 8.0  # s, an echoscu run at most (its own timeouts are 5 s)
GIVE_UP = 3  # failed echoes in a row after which the level's other echoes count as failed, unrun
SOURCES = [f"127.0.0.{i}" for i in range(2, 18)]
#: transfer syntax of the files -> peers.storescu ``propose`` key
PROPOSE_FOR = {
    "1.2.840.10008.1.2.4.80": "jpegls",
    "1.2.840.10008.1.2.4.90": "j2k",
    "1.2.840.10008.1.2.4.70": "jpeg-lossless",
    "1.2.840.10008.1.2.5": "rle",
}

# A started receiver: (port, called AE title, function returning the number of stored instances).


# --------------------------------------------------------------------------------------------
# The flood
# --------------------------------------------------------------------------------------------


class Flood:
    """Keep ``count`` hostile connections open to ``HOST:port`` from a background thread."""

    CONNECT_TIMEOUT = 3.0  # s
    HALF_HEADER = b"\x01\x00\x00"  # 3 of the 6 bytes of an A-ASSOCIATE-RQ header (PS3.8 9.3.2)

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.held = 0  # connected now
        self.closed_by_receiver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self._n = 0

    def __enter__(self) -> Flood:
        if self.count:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def wait_held(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.held < self.count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.held

    def _open(self, sel: selectors.BaseSelector) -> None:
        source = SOURCES[self._n % len(SOURCES)]
        half_open = self._n % 2 == 0
        self._n += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((source, 0))
            err = s.connect_ex((HOST, self.port))
        except OSError:
            s.close()
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            return
        sel.register(s, selectors.EVENT_WRITE, ["connecting", half_open, time.monotonic()])

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            while not self._stop.is_set():
                for _ in range(self.count - len(sel.get_map())):
                    self._open(sel)
                for key, _mask in sel.select(0.1):
                    s, state = key.fileobj, key.data
                    if state[0] == "connecting":
                        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                            sel.unregister(s)
                            s.close()
                            continue
                        if state[1]:
                            try:
                                s.send(self.HALF_HEADER)
                            except OSError:
                                pass
                        state[0] = "open"
                        self.held += 1
                        sel.modify(s, selectors.EVENT_READ, state)
                    else:
                        try:
                            data = s.recv(65536)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        if not data:  # the receiver closed it
                            sel.unregister(s)
                            s.close()
                            self.held -= 1
                            self.closed_by_receiver += 1
                now = time.monotonic()
                for key in list(sel.get_map().values()):
                    if key.data[0] == "connecting" and now - key.data[2] > self.CONNECT_TIMEOUT:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()
            sel.close()
            self.held = 0


#: the receivers, started as benchmarks/ingest.py starts them (fresh, answering, idle)
START = {"dicom-ai": ingest.dicom_ai, "Orthanc": ingest.orthanc}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def echo_once(port: int, aec: str) -> tuple[bool, float]:
    exe = peers.dcmtk_tool("echoscu")
    if exe is None:
        raise FileNotFoundError("DCMTK echoscu not found")
    t0 = time.perf_counter()
    try:
        done = subprocess.run([exe, "-to", "5", "-ta", "5", "-td", "5", "-aec", aec, "-aet", SENDER_AET,
                               HOST, str(port)], capture_output=True, timeout=ECHO_LIMIT,
                              env=peers.tcp_nodelay_env(), check=False)
        ok = done.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    took = time.perf_counter() - t0
    return ok, took if ok else max(took, ECHO_LIMIT)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def transfer(port: int, aec: str, files: list[Path], propose: str | None) -> tuple[bool, float]:
    t0 = time.perf_counter()
    try:
        done = peers.storescu(HOST, port, files, aec=aec, aet=SENDER_AET, propose=propose, timeout=120)
        ok = done.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return ok, time.perf_counter() - t0


def measure(receiver: str, levels: list[int], echoes: int, files: list[Path], propose: str | None,
            workdir: Path) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    workdir.mkdir(parents=True)
    with START[receiver](workdir, 1) as (port, aec, count):
        for level in levels:
            with Flood(port, level) as flood:
                held = flood.wait_held(15) if level else 0
                closed_before = flood.closed_by_receiver
                times, failed, in_a_row = [], 0, 0
                for _ in range(echoes):
                    ok, took = (False, ECHO_LIMIT) if in_a_row >= GIVE_UP else echo_once(port, aec)
                    times.append(took)
                    failed += not ok
                    in_a_row = 0 if ok else in_a_row + 1
                sent, wall = transfer(port, aec, files, propose)
                stored = count()
                row = {"p50": percentile(times, 0.5), "p95": percentile(times, 0.95), "failed": failed,
                       "transfer": wall if sent and stored >= len(files) else float("nan"),
                       "held": held, "closed": flood.closed_by_receiver - closed_before}
            out[level] = row
            print(f"  {receiver:8s} {level:4d} hostile: echo p50 {row['p50'] * 1e3:6.0f} ms, p95 "
                  f"{row['p95'] * 1e3:6.0f} ms, {failed} failed; 51 slices {wall:6.2f} s "
                  f"({'ok' if sent else 'FAILED'}, {stored} stored); held {held}, "
                  f"closed {row['closed']}", file=sys.stderr, flush=True)
            time.sleep(1.0)  # the receiver forgets the closed flood before the next level
    return out


def _ratio(a: float, b: float) -> str:
    if a != a or b != b or not b:  # NaN: that transfer failed
        return "-"
    return f"{a / b:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--levels", default="0,100,500", help="hostile connections, comma-separated")
    ap.add_argument("--echoes", type=int, default=20, help="C-ECHOs per level")
    ap.add_argument("--series", type=Path, default=DEMO_SERIES, help="folder of the series to send")
    ap.add_argument("--tmp", type=Path, default=None, help="parent folder for the receivers' storage")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if args.echoes < 1 or not levels or min(levels) < 0:
        ap.error("--echoes must be at least 1 and --levels non-negative numbers")

    files = sorted(p for p in args.series.iterdir() if p.is_file() and p.suffix == ".dcm")[:SLICES]
    if len(files) < SLICES:
        raise SystemExit(f"fewer than {SLICES} .dcm files in {args.series}")
    import pydicom

    syntax = str(pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    propose = PROPOSE_FOR.get(syntax)
    for p in files:
        p.read_bytes()

    results: dict[str, dict[int, dict[str, float]]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="dicom-ai-flood-", dir=args.tmp))
    try:
        for receiver in START:
            results[receiver] = measure(receiver, levels, args.echoes, files, propose, tmp / receiver)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    size = sum(p.stat().st_size for p in files) / 1e6
    print(f"{args.series.name} of {args.series.parent.name}: first {SLICES} slices, {size:.1f} MB, "
          f"{syntax}; {args.echoes} C-ECHOs per level; loopback, {os.cpu_count()} CPU(s)")
    lines = []
    for receiver, rows in results.items():
        for level, r in rows.items():
            wall = "failed" if r["transfer"] != r["transfer"] else f"{r['transfer']:.2f}"
            lines.append(f"{receiver:9s} {level:7d} {r['held']:5.0f} {r['closed']:6.0f} "
                         f"{r['p50'] * 1e3:11.0f} {r['p95'] * 1e3:7.0f} {r['failed']:4.0f} {wall:>11s}")
    ingest.print_table(f"{'receiver':9s} {'hostile':>7s} {'held':>5s} {'closed':>6s} {'echo p50 ms':>11s} "
                       f"{'p95 ms':>7s} {'fail':>4s} {'51 slices s':>11s}", lines)
    print()
    print(f"{'dicom-ai / Orthanc':19s} {'hostile':>7s} {'echo p50':>8s} {'p95':>6s} {'51 slices':>9s}")
    for level in levels:
        a, b = results["dicom-ai"][level], results["Orthanc"][level]
        ratios = [_ratio(a[k], b[k]) for k in ("p50", "p95", "transfer")]
        print(f"{'':19s} {level:7d} {ratios[0]:>8s} {ratios[1]:>6s} {ratios[2]:>9s}")
    print("(echo times of failed C-ECHOs count as 8 s; '-': a transfer failed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Ingest throughput: dicom-ai vs DCMTK storescp vs Orthanc on the same series (a measurement).

Sends the 275-slice LIDC-IDRI-0314 chest CT over loopback with DCMTK ``storescu`` to three
receivers, one after another in the same run, in three encodings of the same pixels (``--cases``):

* **uncompressed**: ``peers.LIDC_SERIES``, implicit VR little endian, ~145 MB, sent as it is;
* **JPEG-LS**: the repository's demo copy (``demo/ct_chest_LIDC-IDRI-0314/image``, JPEG-LS
  lossless, ~53 MB), sent with ``storescu -xt`` (propose JPEG-LS lossless; the files go as they
  are, no transcoding);
* **JPEG 2000**: a JPEG 2000 lossless copy of the uncompressed series, made at start in the
  temporary folder (pydicom ``Dataset.compress`` with pylibjpeg-openjpeg), sent with
  ``storescu -xv``.

The receivers:

* **dicom-ai** (this checkout's ``dicom-ai serve`` via ``tests/nodeproc.NodeProcess``, started
  with ``PYTHONPATH`` set to the checkout from a working directory of its own;
  ``stable_seconds`` 3600 so no inference job starts during the measurement; default
  ``receivers``, i.e. one receiver process per core sharing the port; writes each instance
  atomically with fsync of the file and its folder, and commits its index row, SQLite
  ``synchronous=NORMAL``, before answering);
* **against** (with ``--against CHECKOUT``): the same for another checkout's ``dicom_ai``,
  e.g. ``git worktree add /tmp/before HEAD~3``, measured in turn with the others for a
  before/after in one run (its ratio column is this checkout's rate over its own);
* **DCMTK storescp** (defaults, files written to ``-od``; ``--fork`` for the 4-association case
  so it serves them concurrently; ``+xa`` for the compressed cases, so it accepts them; note
  that storescp does *not* fsync);
* **Orthanc** (``peers.Orthanc``, default settings: ``SyncStorageArea`` is not set, and its
  default is ``true`` since Orthanc 1.7.4 -- the installed 1.10.1 prints ``"SyncStorageArea" :
  true`` with ``Orthanc --config=FILE`` -- so it fsyncs every file).

Each receiver gets 1 association (one ``storescu`` over all files) and 4 concurrent associations
(the files split into 4 contiguous groups, 4 ``storescu`` processes started together; the time
runs from the first start to the last exit). Every transfer gets fresh storage and a freshly
started receiver. The receiver's start-up is not timed: it is started, must answer C-ECHO (DCMTK
``echoscu``), and its process tree must be idle (no CPU for 0.5 s, so e.g. dicom-ai's worker
process has finished importing) before the clock starts. After each transfer the script checks
that all instances arrived (storescp: files in ``-od``; Orthanc: ``/statistics`` CountInstances;
dicom-ai: ``*.dcm`` under ``<data_dir>/instances``) and stops with an error otherwise.

All DCMTK processes and Orthanc run with ``TCP_NODELAY=1`` (Debian's DCMTK otherwise leaves
Nagle on and stalls ~45 ms per message). ``storescu`` is always DCMTK's
(``peers.dcmtk_tool``), never pynetdicom's same-named script.

Each measurement is repeated ``--runs`` times (runs interleave the receivers, so slow drift of
the machine hits all of them alike); the table shows the median wall time as instances/s and
MB/s (file bytes sent / wall time, MB = 10^6 bytes), the CPU time (user + system) the
receiver's processes spent per instance over the transfer (median; the sender's is not in it,
nor that of processes which ended before the transfer did, such as ``storescp --fork``'s children),
and dicom-ai's instances/s divided by the other receiver's for the same number of associations.
Put ``--tmp`` on a real disk: on tmpfs fsync costs nothing and Orthanc/dicom-ai look faster than
they would be.

    python benchmarks/ingest.py [--runs 3] [--tmp DIR] [--cases uncompressed,JPEG-LS,JPEG-2000]
                                [--receivers dicom-ai,storescp,Orthanc] [--associations 1,4] [--against CHECKOUT]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402
from nodeproc import NodeProcess  # noqa: E402

HOST = "127.0.0.1"
SENDER_AET = "STORESCU"  # the calling AE title NodeProcess allows
RECEIVERS = ("dicom-ai", "storescp", "Orthanc")
ASSOCIATIONS = (1, 4)
DEMO_SERIES = REPO / "demo" / "ct_chest_LIDC-IDRI-0314" / "image"
#: case -> storescu option proposing its transfer syntax (None: storescu's uncompressed default)
CASES: dict[str, str | None] = {"uncompressed": None, "JPEG-LS": "-xt", "JPEG-2000": "-xv"}

# A started receiver: (port, called AE title, function returning the number of stored
# instances, pid of its root process).
Target = tuple[int, str, Callable[[], int], int]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _tree_cpu_seconds(root_pid: int) -> float:
    """CPU time (user + system) used so far by ``root_pid`` and its live descendants."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        pid = int(entry)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    tree = {root_pid}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, window: float = 0.5, timeout: float = 60.0) -> None:
    """Wait until the process tree of ``pid`` used < 2 % of a CPU over ``window`` seconds."""
    deadline = time.monotonic() + timeout
    before = _tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        after = _tree_cpu_seconds(pid)
        if after - before < 0.02 * window:
            return
        before = after
    raise RuntimeError(f"receiver (pid {pid}) still busy {timeout:.0f} s after start-up")


def wait_echo(port: int, aec: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Wait until ``aec`` at ``HOST:port`` answers C-ECHO (DCMTK echoscu)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"receiver exited with status {proc.returncode} before answering C-ECHO")
        if peers.echoscu(HOST, port, aec=aec, aet=SENDER_AET, timeout=10).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{aec} on port {port} did not answer C-ECHO within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group we started (the receiver and its children), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def print_table(header: str, rows: Iterable[str]) -> None:
    """Print ``header``, a rule as wide as it, and ``rows`` (one line each)."""
    print(header)
    print("-" * len(header))
    for row in rows:
        print(row)


def _to_j2k(src: Path, dest: Path) -> None:
    import pydicom  # the benchmark's own import: only this case needs it
    from pydicom.uid import JPEG2000Lossless

    ds = pydicom.dcmread(src)
    ds.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg; raises if no encoder is installed
    ds.save_as(dest, enforce_file_format=True)


def j2k_copy(files: list[Path], out_dir: Path) -> list[Path]:
    """JPEG 2000 lossless copies of ``files`` in ``out_dir`` (same UIDs; one process per CPU)."""
    out_dir.mkdir(parents=True)
    dests = [out_dir / f.name for f in files]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_to_j2k, files, dests, chunksize=8))
    return dests


def split(files: list[Path], n: int) -> list[list[Path]]:
    """``files`` in ``n`` contiguous groups of nearly equal size."""
    size, extra = divmod(len(files), n)
    groups, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        groups.append(files[start:end])
        start = end
    return groups


# --------------------------------------------------------------------------------------------
# Receivers: context managers yielding a started, idle receiver
# --------------------------------------------------------------------------------------------


def node_dicom_ai(pythonpath: str) -> Path:
    """The ``dicom_ai`` package a node started with ``PYTHONPATH`` ``pythonpath`` from a working
    directory of its own imports; SystemExit if it is not the one in ``pythonpath``."""
    with tempfile.TemporaryDirectory() as cwd:
        out = subprocess.run([sys.executable, "-c", "import dicom_ai; print(dicom_ai.__file__)"], cwd=cwd,
                             env={**os.environ, "PYTHONPATH": pythonpath}, capture_output=True, text=True, check=True)
    found = Path(out.stdout.strip()).parent
    if found != Path(pythonpath) / "dicom_ai":
        raise SystemExit(f"a node with PYTHONPATH={pythonpath} would import {found}, not {pythonpath}/dicom_ai")
    return found


@contextmanager
def dicom_ai(workdir: Path, associations: int, compressed: bool = False, checkout: Path = REPO) -> Iterator[Target]:
    """``dicom-ai serve`` of ``checkout``: started as ``python -m dicom_ai.cli`` with
    ``PYTHONPATH`` set to it and ``workdir`` as its working directory (``python -m`` puts the
    working directory first, so from a repository root it would run that root's code)."""
    node = NodeProcess(workdir, stable_seconds=3600, extra={"node": {"receivers": 0}})  # the shipped default
    try:
        with mock.patch.dict(os.environ, {"PYTHONPATH": str(checkout)}), contextlib.chdir(workdir):
            node.start()
        assert node.proc is not None
        wait_idle(node.proc.pid)
        instances = workdir / "var" / "instances"
        yield node.port, node.ae_title, lambda: sum(1 for _ in instances.rglob("*.dcm")), node.proc.pid
    except BaseException:
        print(f"--- dicom-ai log tail:\n{node.log_tail()}", file=sys.stderr)
        raise
    finally:
        node.stop()


@contextmanager
def storescp(workdir: Path, associations: int, compressed: bool = False) -> Iterator[Target]:
    exe = peers.dcmtk_tool("storescp")
    if exe is None:
        raise FileNotFoundError("DCMTK storescp not found")
    out_dir = workdir / "received"
    out_dir.mkdir(parents=True)
    aet = "STORESCP"
    proc: subprocess.Popen | None = None
    try:
        for attempt in range(3):  # a port taken between free_port() and bind: try another
            port = peers.free_port()
            args = [exe, "-aet", aet, "-od", str(out_dir)]
            if associations > 1:
                args.append("--fork")
            if compressed:
                args.append("+xa")
            with open(workdir / "storescp.log", "ab") as log:
                proc = subprocess.Popen(
                    args + [str(port)], stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, env=peers.tcp_nodelay_env(), start_new_session=True,
                )
            try:
                wait_echo(port, aet, proc)
                break
            except RuntimeError:
                stop_process(proc)
                if attempt == 2:
                    raise
        assert proc is not None
        wait_idle(proc.pid)
        yield port, aet, lambda: sum(1 for p in out_dir.iterdir() if p.is_file()), proc.pid
    except BaseException:
        log_text = (workdir / "storescp.log").read_text(errors="replace") if (workdir / "storescp.log").exists() else ""
        print(f"--- storescp log tail:\n{log_text[-3000:]}", file=sys.stderr)
        raise
    finally:
        if proc is not None:
            stop_process(proc)


@contextmanager
def orthanc(workdir: Path, associations: int, compressed: bool = False) -> Iterator[Target]:
    pacs = peers.Orthanc(workdir=workdir / "orthanc")  # default settings: SyncStorageArea true
    try:
        pacs.start()
        wait_echo(pacs.dicom_port, pacs.aet, pacs.proc)
        assert pacs.proc is not None
        wait_idle(pacs.proc.pid)
        yield pacs.dicom_port, pacs.aet, lambda: int(pacs.get("/statistics")["CountInstances"]), pacs.proc.pid
    except BaseException:
        print(f"--- Orthanc log tail:\n{pacs.log_tail()}", file=sys.stderr)
        raise
    finally:
        pacs.stop()


START = {"dicom-ai": dicom_ai, "storescp": storescp, "Orthanc": orthanc}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def send(port: int, aec: str, groups: list[list[Path]], logdir: Path, propose: str | None = None) -> float:
    """Start one DCMTK storescu per group at once (``propose``: its option proposing the files'
    transfer syntax, e.g. ``-xt``); return seconds from first start to last exit."""
    exe = peers.dcmtk_tool("storescu")
    if exe is None:
        raise FileNotFoundError("DCMTK storescu not found")
    env = peers.tcp_nodelay_env()
    logs = [open(logdir / f"storescu-{i}.log", "wb") for i in range(len(groups))]
    procs: list[subprocess.Popen] = []
    try:
        t0 = time.perf_counter()
        for group, log in zip(groups, logs, strict=False):
            procs.append(subprocess.Popen(
                [exe, *([propose] if propose else []), "-aec", aec, "-aet", SENDER_AET, HOST,
                 str(port), *map(str, group)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            ))
        for p in procs:
            p.wait(600)
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        detail = "\n".join(
            f"storescu {i} exited {procs[i].returncode}:\n"
            + (logdir / f"storescu-{i}.log").read_text(errors="replace")[-2000:]
            for i in failed
        )
        raise RuntimeError(detail)
    return wall


def measure(receiver: str, associations: int, files: list[Path], workdir: Path,
            propose: str | None = None, against: Path | None = None) -> tuple[float, float]:
    """One transfer into a fresh receiver with fresh storage; returns the wall time and the CPU
    time (user + system) of the receiver's processes over it, in seconds. The receiver
    ``against`` is :func:`dicom_ai` of the checkout ``against``."""
    workdir.mkdir(parents=True)
    start = partial(dicom_ai, checkout=against) if receiver == "against" else START[receiver]
    try:
        with start(workdir, associations, propose is not None) as (port, aec, count, pid):
            if count() != 0:
                raise RuntimeError(f"{receiver}: storage not empty before the transfer")
            cpu = _tree_cpu_seconds(pid)
            wall = send(port, aec, split(files, associations), workdir, propose)
            cpu = _tree_cpu_seconds(pid) - cpu
            stored = count()
            if stored != len(files):
                raise RuntimeError(
                    f"{receiver}, {associations} association(s): {stored} of {len(files)} "
                    f"instances stored"
                )
            return wall, cpu
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=3, help="repetitions of each measurement (median)")
    ap.add_argument("--tmp", type=Path, default=None,
                    help="parent folder for receivers' storage (default: the system temp folder)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated, of {', '.join(CASES)} (default: all)")
    ap.add_argument("--receivers", default=",".join(RECEIVERS),
                    help="comma-separated, of dicom-ai, storescp, Orthanc (default: all; ratios need dicom-ai)")
    ap.add_argument("--associations", default=",".join(map(str, ASSOCIATIONS)),
                    help="comma-separated numbers of concurrent associations (default: 1,4)")
    ap.add_argument("--against", type=Path, default=None,
                    help="another checkout (e.g. a git worktree of an older commit): its dicom-ai is "
                         "measured too, as the receiver 'against', in turn with the others")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    receivers = [r.strip() for r in args.receivers.split(",") if r.strip()]
    assocs = [int(a) for a in args.associations.split(",") if a.strip()]
    if args.runs < 1 or not cases or not receivers or not assocs or min(assocs) < 1:
        ap.error("--runs, --associations must be at least 1; --cases, --receivers not empty")
    if unknown := [c for c in cases if c not in CASES] + [r for r in receivers if r not in START]:
        ap.error(f"unknown case or receiver: {', '.join(unknown)}")
    against = args.against.resolve() if args.against is not None else None
    if "dicom-ai" in receivers:
        print(f"dicom-ai: this checkout's node imports {node_dicom_ai(str(REPO))}", file=sys.stderr)
    if against is not None:
        print(f"against: the node of {against} imports {node_dicom_ai(str(against))}", file=sys.stderr)
        receivers.insert(receivers.index("dicom-ai") + 1 if "dicom-ai" in receivers else 0, "against")

    tmp = Path(tempfile.mkdtemp(prefix="dicom-ai-ingest-", dir=args.tmp))
    try:
        series: dict[str, list[Path]] = {}
        sizes: dict[str, int] = {}  # bytes of each case's files
        for case in cases:
            if case == "JPEG-2000":
                source = sorted(p for p in peers.LIDC_SERIES.iterdir() if p.is_file())
                print(f"  making a JPEG 2000 lossless copy of {len(source)} files ...", file=sys.stderr, flush=True)
                series[case] = j2k_copy(source, tmp / "j2k")
            else:
                folder = peers.LIDC_SERIES if case == "uncompressed" else DEMO_SERIES
                series[case] = sorted(p for p in folder.iterdir() if p.is_file())
            if not series[case]:
                raise SystemExit(f"no files for the {case} case")
            # read once so the first measurement does not pay for a cold page cache
            sizes[case] = sum(len(p.read_bytes()) for p in series[case])

        walls: dict[tuple[str, str, int], list[float]] = {
            (c, r, a): [] for c in cases for r in receivers for a in assocs}
        cpus: dict[tuple[str, str, int], list[float]] = {k: [] for k in walls}
        for run in range(args.runs):
            for case in cases:
                files = series[case]
                for a in assocs:
                    for r in receivers:
                        wall, cpu = measure(r, a, files, tmp / f"{r}-{a}-{run}", CASES[case], against)
                        walls[case, r, a].append(wall)
                        cpus[case, r, a].append(cpu)
                        print(f"  run {run + 1}/{args.runs}  {case:12s} {r:9s} {a} assoc  {wall:7.2f} s  "
                              f"{len(files) / wall:7.1f} inst/s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"LIDC-IDRI-0314, DCMTK storescu over loopback, TCP_NODELAY=1, median of {args.runs} "
          f"run(s), {os.cpu_count()} CPU(s)")
    for case in cases:
        files = series[case]
        total_bytes = sizes[case]
        rate = {(r, a): len(files) / statistics.median(walls[case, r, a]) for r in receivers for a in assocs}
        print()
        print(f"{case} ({CASES[case] or 'storescu default'}): {len(files)} instances, "
              f"{total_bytes / 1e6:.1f} MB")
        rows = []
        for a in assocs:
            for r in receivers:
                wall = statistics.median(walls[case, r, a])
                ratio = ("-" if r == "dicom-ai" or "dicom-ai" not in receivers
                         else f"{rate['dicom-ai', a] / rate[r, a]:.2f}")
                each = " ".join(f"{w:.2f}" for w in walls[case, r, a])
                cpu_ms = statistics.median(cpus[case, r, a]) / len(files) * 1e3
                rows.append(f"{r:10s} {a:5d} {rate[r, a]:8.1f} {total_bytes / 1e6 / wall:7.1f} "
                            f"{cpu_ms:8.2f} {ratio:>13s}  {each}")
        print_table(f"{'receiver':10s} {'assoc':>5s} {'inst/s':>8s} {'MB/s':>7s} {'CPU ms':>8s} "
                    f"{'dicom-ai/this':>13s}  wall s (each run)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Completion latency: from the last instance acknowledged to the job created (a measurement).

Sends copies of the 51-slice CRLM-CT-1006 abdominal CT (each copy with fresh Study, Series and
SOP Instance UIDs) with DCMTK ``storescu`` to one ``dicom-ai serve`` (``stable_seconds`` 30,
default ``[completion]`` otherwise, worker idle so no inference runs), in three cases:

* (a) **counts**: every instance carries Number of Series Related Instances (0020,1209) = 51;
* (b) **one association**: no counts, the whole series in one ``storescu`` run;
* (c) **split**: no counts, the series in two ``storescu`` runs one after the other.

The latency of one send is read from the node's own index: the job's ``created_at`` minus the
series' ``last_received_at`` (set when the last instance was indexed, just before its C-STORE
response). It prints p50, p95 and max per case, the completion signal that fired, and
``stable_seconds`` beside them. Goal: (a) and (b) under 2 s at p95.

    python benchmarks/trigger.py [--sends 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402
from nodeproc import NodeProcess  # noqa: E402

from dicom_ai.cache.db import Job, Series, open_index  # noqa: E402

STABLE_SECONDS = 30.0
SOURCE = peers.SHARED_DATA / "ct_abdomen_CRLM-CT-1006" / "image"


def copy_series(dest: Path, with_count: bool) -> tuple[str, list[Path]]:
    count = {"NumberOfSeriesRelatedInstances": len(list(SOURCE.iterdir()))} if with_count else {}
    files = peers.copy_series(SOURCE, dest, **count)
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID), files


def send(node: NodeProcess, files: list[Path]) -> None:
    done = peers.storescu("127.0.0.1", node.port, [str(f) for f in files], aec=node.ae_title)
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stdout} {done.stderr}")


def latencies(node: NodeProcess, series_uids: list[str], timeout: float) -> list[tuple[float, str]]:
    sessions = open_index(f"sqlite:///{node.workdir / 'var' / 'index.sqlite'}")
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            rows = s.execute(
                select(Series.last_received_at, Job.created_at, Series.completion_signal)
                .join(Job, Job.series_fk == Series.id)
                .where(Series.series_instance_uid.in_(series_uids))
            ).all()
        if len(rows) >= len(series_uids):
            return [((job - last).total_seconds(), signal) for last, job, signal in rows]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(rows)} of {len(series_uids)} series got a job; log:\n{node.log_tail()}")
        time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sends", type=int, default=20, help="series sent per case (at least 20)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dicom-ai-trigger-") as tmp:
        work = Path(tmp)
        node = NodeProcess(work / "node", stable_seconds=STABLE_SECONDS,
                           extra={"worker": {"poll_seconds": 3600}})
        with node:
            for case in ("a) counts", "b) one association", "c) split over two"):
                uids = []
                for k in range(args.sends):
                    folder = work / "src" / f"{case[0]}{k:02d}"
                    uid, files = copy_series(folder, with_count=case.startswith("a"))
                    if case.startswith("c"):
                        half = len(files) // 2
                        send(node, files[:half])
                        send(node, files[half:])
                    else:
                        send(node, files)
                    uids.append(uid)
                    print(f"  {case}: sent {k + 1}/{args.sends}", file=sys.stderr)
                got = latencies(node, uids, timeout=STABLE_SECONDS * 3 + 60)
                values = sorted(v for v, _ in got)
                p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
                signals = ", ".join(sorted({s for _, s in got}))
                rows.append((case, len(values), statistics.median(values), p95, values[-1], signals))
    print(f"\nCRLM-CT-1006 (51 instances) per send, DCMTK storescu over loopback; stable_seconds = "
          f"{STABLE_SECONDS:g} s")
    print(f"{'case':22s} {'n':>3s} {'p50 s':>7s} {'p95 s':>7s} {'max s':>7s}  signal")
    for case, n, p50, p95, worst, signals in rows:
        print(f"{case:22s} {n:3d} {p50:7.2f} {p95:7.2f} {worst:7.2f}  {signals}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

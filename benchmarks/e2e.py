"""End-to-end latency of the node on the real LIDC chest CT (a measurement, not a test).

Starts Orthanc (the PACS) and ``dicom-ai serve`` on loopback, sends the 275-slice LIDC series with
DCMTK ``storescu``, and reports the time from the last instance acknowledged to the SEG and SR
acknowledged by Orthanc, minus ``stable_seconds``, with its split and the worker's peak RSS.
Side by side, the same series' transfer time into Orthanc directly (the PACS without the node),
and ratios.

    python benchmarks/e2e.py [--runs 1] [--stable-seconds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402
from nodeproc import NodeProcess  # noqa: E402

from dicom_ai.cache.db import Delivery, Instance, Job, Series, open_index  # noqa: E402


def one_run(tmp: Path, stable: float) -> dict[str, float]:
    with peers.Orthanc(workdir=tmp / "orthanc") as pacs:
        t = time.perf_counter()
        direct = peers.storescu("127.0.0.1", pacs.dicom_port, peers.LIDC_SERIES, aec=pacs.aet)
        direct_s = time.perf_counter() - t
        assert direct.returncode == 0, direct.stderr
        for study in pacs.get("/studies"):
            pacs.delete(f"/studies/{study}")
        dest = [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}]
        with NodeProcess(tmp / "node", destinations=dest, stable_seconds=stable) as node:
            t = time.perf_counter()
            sent = peers.storescu("127.0.0.1", node.port, peers.LIDC_SERIES, aec=node.ae_title)
            send_s = time.perf_counter() - t
            assert sent.returncode == 0, sent.stderr
            sessions = open_index(f"sqlite:///{tmp / 'node' / 'var' / 'index.sqlite'}")
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                with sessions() as s:
                    states = [d.state for d in s.query(Delivery)]
                    if len(states) == 2 and all(x != "pending" for x in states):
                        break
                    job = s.query(Job).first()
                    if job is not None and job.state == "failed":
                        raise SystemExit(f"job failed: {job.reason}")
                time.sleep(0.2)
            with sessions() as s:
                last_ack = max(i.received_at for i in s.query(Instance))
                series = s.query(Series).one()
                job = s.query(Job).one()
                delivered = max(d.delivered_at for d in s.query(Delivery))
                e2e = (delivered - last_ack).total_seconds()
                return {
                    "transfer into Orthanc directly (s)": direct_s,
                    "transfer into dicom-ai (s)": send_s,
                    "e2e minus stable_seconds (s)": e2e - stable,
                    "completion detected after stable_seconds (s)": (series.completed_at - last_ack).total_seconds() - stable,
                    "queue wait (s)": (job.started_at - job.created_at).total_seconds(),
                    **{f"{k} (s)": v for k, v in job.timings.items() if k != "worker_peak_rss_mb"},
                    "send to PACS (s)": (delivered - job.finished_at).total_seconds(),
                    "worker peak RSS (MB)": job.timings.get("worker_peak_rss_mb", float("nan")),
                }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--stable-seconds", type=float, default=2.0)
    args = ap.parse_args()
    rows = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="dicom-ai-e2e-") as tmp:
            rows.append(one_run(Path(tmp), args.stable_seconds))
    keys = list(rows[0])
    print(f"LIDC-IDRI-0314, 275 slices, stable_seconds={args.stable_seconds}, runs={args.runs}")
    for k in keys:
        vals = [r[k] for r in rows]
        print(f"  {k:48s} {sum(vals) / len(vals):9.2f}")
    r = rows[-1]
    print(f"  ratio: transfer into dicom-ai / into Orthanc    {r['transfer into dicom-ai (s)'] / r['transfer into Orthanc directly (s)']:9.2f}")
    print(f"  ratio: e2e / inference                          {r['e2e minus stable_seconds (s)'] / r['inference (s)']:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

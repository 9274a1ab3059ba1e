"""End-to-end latency of the node on the real LIDC chest CT (a measurement, not a test).

Starts Orthanc (the PACS) and ``dicom-ai serve`` on loopback, sends the 275-slice LIDC-IDRI-0314
series with DCMTK ``storescu``, waits until the SEG and the SR are both ``delivered`` (a job or a
delivery that fails stops the script with its reason), and reports:

* **last ack -> delivered**: from the last instance acknowledged to the last result
  acknowledged by Orthanc, what a site sees;
* of which the **completion wait**: until the node decided the series was complete (here the
  A-RELEASE signal, ``release_grace_seconds`` = 1 s after the release, found at the next
  ``check_interval_seconds`` tick, the shipped 0.25 s; ``--stable-seconds`` is the idle timer
  behind it), a wait the site configures;
* **completion -> delivered**: the node's own work, from that decision to the last result
  acknowledged;
* the worker's split (load, model, post-processing, report; the preview, written after the
  results are committed, is not part of ``total``) and its peak RSS; ``load`` is near 0 when
  the idle worker read the series during the release grace (``[worker] read_ahead``, on by
  default; ``--read-ahead both`` measures each series without it and with it, interleaved run
  by run);
* whether the network ran in bfloat16 (the SEG's Algorithm Parameters): ``[worker]
  reduced_precision``, on by default, uses it where the package declares it and the CPU has it;
  ``--precision both`` measures each series in float32 and reduced, interleaved run by run.

Two copies of the series: the uncompressed one in ``../shared/data`` (Implicit VR Little
Endian) and the repository's JPEG-LS lossless demo copy (sent with ``-xt``). Side by side, in the
same run, the same series' transfer time into Orthanc directly (the PACS without the node), and
ratios. Every run gets a fresh Orthanc and a fresh node.

    python benchmarks/e2e.py [--runs 3] [--stable-seconds 2] [--series uncompressed jpegls] [--read-ahead on|off|both]
                             [--precision reduced|float32|both] [--against CHECKOUT]

``--against /path/to/another/checkout`` (e.g. ``git worktree add /tmp/before HEAD~3``) runs
that checkout's node as well, run by run in turn with this one's, for a before/after in one
run: each node is started as ``python -m dicom_ai.cli`` with ``PYTHONPATH`` set to its checkout
and its working directory a fresh temporary folder (``python -m`` puts the working directory
before ``PYTHONPATH``, so from a repository root it would run that root's code), and the
script checks which ``dicom_ai`` each node imports before it starts. It runs whatever
``dicom_ai`` that path holds (``--precision float32|both`` needs a checkout that knows
``[worker] reduced_precision``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402
import pydicom  # noqa: E402
from ingest import node_dicom_ai, wait_idle  # noqa: E402  (benchmarks/, the script's folder)
from nodeproc import NodeProcess  # noqa: E402

from dicom_ai.cache.db import Delivery, Instance, Job, Result, Series, open_index  # noqa: E402
from dicom_ai.config import CompletionSettings  # noqa: E402

#: name -> (folder, storescu proposal)
SERIES: dict[str, tuple[Path, str | None]] = {
    "uncompressed": (peers.LIDC_SERIES, None),
    "jpegls": (REPO / "demo" / "ct_chest_LIDC-IDRI-0314" / "image", "jpegls"),
}
RESULTS = 2  # the lung model's SEG and SR
CHECK_INTERVAL = CompletionSettings().check_interval_seconds  # the shipped default, not the tests' 0.5 s
READ_AHEAD = {"on": [True], "off": [False], "both": [False, True]}
#: --precision -> [worker] reduced_precision of each mode (None: the node's default, key not set)
PRECISION = {"reduced": [None], "float32": [False], "both": [False, True]}
SPLIT = ("load", "model_load", "preprocess", "inference", "postprocess", "report", "preview", "total")


def _wait_delivered(sessions, timeout: float) -> None:
    """Return once every result is delivered; SystemExit with the reason when a job or a
    delivery fails, or at ``timeout`` (s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as s:
            job = s.query(Job).first()
            if job is not None and job.state == "failed":
                raise SystemExit(f"job failed: {job.reason}")
            states = [d.state for d in s.query(Delivery)]
            if "failed" in states:
                raise SystemExit("a delivery failed: " + "; ".join(d.last_status for d in s.query(Delivery)))
            if len(states) == RESULTS and all(x == "delivered" for x in states):
                return
        time.sleep(0.1)
    raise SystemExit(f"results not delivered within {timeout:.0f} s")


def _wait_preview(sessions, timeout: float) -> None:
    """Return once the job's ``preview`` time is recorded (the web page's files, written after
    its results are committed), or at ``timeout`` (s); the split then shows it either way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as s:
            job = s.query(Job).first()
            if job is not None and "preview" in (job.timings or {}):
                return
        time.sleep(0.1)


def one_run(tmp: Path, folder: Path, propose: str | None, stable: float, read_ahead: bool = True,
            reduced_precision: bool | None = None) -> dict[str, float]:
    with peers.Orthanc(workdir=tmp / "orthanc") as pacs:
        t = time.perf_counter()
        direct = peers.storescu("127.0.0.1", pacs.dicom_port, folder, aec=pacs.aet, propose=propose)
        direct_s = time.perf_counter() - t
        assert direct.returncode == 0, direct.stderr
        for study in pacs.get("/studies"):
            pacs.delete(f"/studies/{study}")
        dest = [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}]
        with NodeProcess(tmp / "node", destinations=dest, stable_seconds=stable,
                         extra={"node": {"receivers": 0},  # the shipped default, as the completion tick
                                "completion": {"check_interval_seconds": CHECK_INTERVAL},
                                "worker": {"poll_seconds": 0.5, "preload_models": True,
                                           "read_ahead": read_ahead,
                                           **({} if reduced_precision is None
                                              else {"reduced_precision": reduced_precision})}}) as node:
            assert node.proc is not None
            wait_idle(node.proc.pid)  # the worker has loaded its models: not timed, as in service
            t = time.perf_counter()
            sent = peers.storescu("127.0.0.1", node.port, folder, aec=node.ae_title, propose=propose)
            send_s = time.perf_counter() - t
            assert sent.returncode == 0, sent.stderr
            sessions = open_index(f"sqlite:///{tmp / 'node' / 'var' / 'index.sqlite'}")
            _wait_delivered(sessions, 900)
            _wait_preview(sessions, 30)  # written after the results are committed: not on the path
            with sessions() as s:
                last_ack = max(i.received_at for i in s.query(Instance))
                series = s.query(Series).one()
                job = s.query(Job).one()
                delivered = max(d.delivered_at for d in s.query(Delivery) if d.delivered_at is not None)
                timings = dict(job.timings or {})
                row = {
                    "transfer into Orthanc directly (s)": direct_s,
                    "transfer into dicom-ai (s)": send_s,
                    "last ack -> delivered (s)": (delivered - last_ack).total_seconds(),
                    "completion wait (s)": (series.completed_at - last_ack).total_seconds(),
                    "completion -> delivered (s)": (delivered - series.completed_at).total_seconds(),
                    "queue wait (s)": (job.started_at - job.created_at).total_seconds(),
                }
                row.update({f"worker {k} (s)": float(timings.get(k, float("nan"))) for k in SPLIT})
                row["send to PACS (s)"] = (delivered - job.finished_at).total_seconds()
                row["worker peak RSS (MB)"] = float(timings.get("worker_peak_rss_mb", float("nan")))
                row["series read ahead of its job (1 = yes)"] = float(timings.get("read_ahead", 0))
                seg = s.query(Result).filter_by(kind="SEG").one()
                header = pydicom.dcmread(tmp / "node" / "var" / seg.path, stop_before_pixels=True)
                algorithm = header.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
                row["network in bfloat16 (1 = yes)"] = float(algorithm.get("AlgorithmParameters") == "precision=bfloat16")
                return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stable-seconds", type=float, default=2.0)
    ap.add_argument("--series", nargs="+", choices=list(SERIES), default=list(SERIES))
    ap.add_argument("--read-ahead", choices=("on", "off", "both"), default="on",
                    help="[worker] read_ahead; both: each series with it off and on, interleaved")
    ap.add_argument("--precision", choices=tuple(PRECISION), default="reduced",
                    help="[worker] reduced_precision: the default (reduced where the model and CPU allow), "
                         "off (float32), or both, interleaved")
    ap.add_argument("--against", type=Path, default=None,
                    help="another checkout (e.g. the previous commit): its node runs too, interleaved run by run")
    args = ap.parse_args()
    # (label, PYTHONPATH of its node)
    checkouts = [("this checkout", str(REPO))] + ([("against", str(args.against.resolve()))] if args.against else [])
    for label, path in checkouts:
        print(f"{label}: the node runs dicom_ai from {node_dicom_ai(path)}")
    print(f"LIDC-IDRI-0314, 275 slices, stable_seconds={args.stable_seconds}, runs={args.runs} (median shown)")
    # (label, read_ahead, reduced_precision, PYTHONPATH of the node)
    modes = [(f"{label}, read_ahead {'on' if ra else 'off'}"
              + ("" if rp is None else f", reduced_precision {'on' if rp else 'off'}"), ra, rp, path)
             for rp in PRECISION[args.precision] for ra in READ_AHEAD[args.read_ahead] for label, path in checkouts]
    for name in args.series:
        folder, propose = SERIES[name]
        rows: dict[str, list[dict[str, float]]] = {m[0]: [] for m in modes}
        for _ in range(args.runs):
            for label, read_ahead, reduced, path in modes:  # interleaved: the machine's drift touches each alike
                # the node is started inside: PYTHONPATH chooses the dicom_ai it runs, from a
                # working directory without one (see the module docstring)
                with tempfile.TemporaryDirectory(prefix="dicom-ai-e2e-") as tmp, \
                        mock.patch.dict(os.environ, {"PYTHONPATH": path}), contextlib.chdir(tmp):
                    rows[label].append(one_run(Path(tmp), folder, propose, args.stable_seconds, read_ahead, reduced))
        first = statistics.median(r["last ack -> delivered (s)"] for r in rows[modes[0][0]])
        for label, *_ in modes:
            runs = rows[label]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"\n{name} ({'storescu ' + peers.PROPOSE[propose] if propose else 'Implicit VR Little Endian'}), "
                  f"{label}")
            for k, v in med.items():
                print(f"  {k:48s} {v:9.2f}   (runs: {', '.join(f'{r[k]:.2f}' for r in runs)})")
            print(f"  ratio: transfer into dicom-ai / into Orthanc    "
                  f"{med['transfer into dicom-ai (s)'] / med['transfer into Orthanc directly (s)']:9.2f}")
            print(f"  ratio: completion -> delivered / worker total   "
                  f"{med['completion -> delivered (s)'] / med['worker total (s)']:9.2f}")
            if label != modes[0][0]:
                print(f"  ratio: last ack -> delivered / {modes[0][0]}: "
                      f"{med['last ack -> delivered (s)'] / first:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

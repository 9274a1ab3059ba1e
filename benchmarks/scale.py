"""Jobs per hour with Celery workers against the local executor, on this machine (a measurement).

The same 20 real series (copies of the 51-slice CRLM-CT-1006 abdominal CT, each with fresh
Study, Series and SOP Instance UIDs) are sent with DCMTK ``storescu`` to a fresh node, on a
fresh PostgreSQL index, in three configurations:

* **local**: ``[node] executor = "local"``, the node's own worker process (the reference);
* **celery x1**: ``executor = "celery"``, a Redis broker and one ``dicom-ai worker``;
* **celery x2**: the same with two ``dicom-ai worker`` processes.

The workers are started and idle first; then all series are sent back to back, one
association each, and the jobs run as their series complete. Per configuration it prints jobs
per hour (the series count divided by the time from the first job queued to the last one
finished), the ratio to the local executor, and the latency the engine adds per job, from
queued to started, p50 and p95, measured in a second pass that sends one series at a time to
idle workers.

    python benchmarks/scale.py [--series 20] [--model dicom-ai-body-region]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402
import pgserver  # noqa: E402
import redisserver  # noqa: E402
from nodeproc import NodeProcess, WorkerProcess  # noqa: E402

from dicom_ai.cache.db import Job  # noqa: E402

SOURCE = peers.SHARED_DATA / "ct_abdomen_CRLM-CT-1006" / "image"
MODELS = ("dicom-ai-lung", "dicom-ai-body-region")


def _use_only(node: NodeProcess, model: str) -> None:
    for other in MODELS:
        if other != model:
            node.cli("models", "disable", other, "--user", "bench")
    if node.cli("models", "enable", model, "--user", "bench").returncode != 0:
        raise RuntimeError(f"cannot enable {model}")
    if not node.wait_for_log(f"models now: {model}", 60):
        raise RuntimeError(node.log_tail())


def _send(node: NodeProcess, folder: Path) -> None:
    done = peers.storescu("127.0.0.1", node.port, folder, aec=node.ae_title)
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr}")


def _ended(node: NodeProcess, n: int, timeout: float) -> list[Job]:
    return peers.wait_for(lambda: len(jobs := [j for j in node.rows(Job) if j.state in ("done", "failed")]) >= n
                          and jobs, timeout, f"{n} jobs ended", node.log_tail, interval=0.5)


def run(config: str, folders: list[Path], probes: list[Path], model: str, work: Path, pg, redis) -> dict:
    workers_n = {"local": 0, "celery x1": 1, "celery x2": 2}[config]
    extra: dict = {"node": {"database_url": pg.database("bench"), "receivers": 0}, "worker": {"preload_models": True}}
    if workers_n:
        extra["node"]["executor"] = "celery"
        extra["celery"] = {"broker_url": redis.url}
    node = NodeProcess(work / config.replace(" ", ""), stable_seconds=30, extra=extra)
    workers: list[WorkerProcess] = []
    with node:
        _use_only(node, model)
        try:
            workers = [WorkerProcess(node, work / f"{config.replace(' ', '')}-w{i}", {"name": f"w{i}"}).start()
                       for i in range(workers_n)]
            for w in workers:
                peers.wait_for(lambda w=w: "ready." in w.log_tail(200), 120, "worker consuming", w.log_tail)
            for folder in folders:
                _send(node, folder)
            jobs = _ended(node, len(folders), 1800)
            failed = [j.reason for j in jobs if j.state != "done"]
            if failed:
                raise RuntimeError(f"{config}: failed jobs: {failed}")
            span = (max(j.finished_at for j in jobs) - min(j.created_at for j in jobs)).total_seconds()
            before = {j.id for j in jobs}
            for folder in probes:  # one at a time to idle workers: the engine's added latency
                _send(node, folder)
                _ended(node, len(before) + probes.index(folder) + 1, 300)
            latency = [(j.started_at - j.created_at).total_seconds() for j in node.rows(Job) if j.id not in before]
            return {"config": config, "jobs": len(jobs), "span": span, "per_hour": len(jobs) / span * 3600,
                    "latency": sorted(latency)}
        finally:
            for w in workers:
                w.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--probes", type=int, default=10, help="series sent one at a time for the latency")
    ap.add_argument("--model", default="dicom-ai-body-region", choices=MODELS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dicom-ai-scale-") as tmp:
        work = Path(tmp)
        folders = [work / "series" / str(i) for i in range(args.series)]
        probes = [work / "probes" / str(i) for i in range(args.probes)]
        rows = []
        with redisserver.RedisServer() as redis, pgserver.PostgresServer() as pg:
            for config in ("local", "celery x1", "celery x2"):
                for folder in folders + probes:  # fresh UIDs for every configuration
                    shutil.rmtree(folder, ignore_errors=True)
                    peers.copy_series(SOURCE, folder)
                rows.append(run(config, folders, probes, args.model, work, pg, redis))
                print(f"{config}: {rows[-1]['per_hour']:.0f} jobs/h", flush=True)
    local = rows[0]["per_hour"]
    print(f"\n{args.series} series x {args.model}; latency: queued to started, {args.probes} single sends;"
          f" {len(os.sched_getaffinity(0))} CPU cores")
    print(f"{'executor':12s} {'jobs':>5s} {'span s':>8s} {'jobs/h':>8s} {'ratio':>6s} {'lat p50 s':>10s} {'lat p95 s':>10s}")
    for r in rows:
        lat = r["latency"]
        p95 = lat[int(0.95 * (len(lat) - 1))]
        print(f"{r['config']:12s} {r['jobs']:5d} {r['span']:8.1f} {r['per_hour']:8.0f} {r['per_hour'] / local:6.2f}"
              f" {statistics.median(lat):10.2f} {p95:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

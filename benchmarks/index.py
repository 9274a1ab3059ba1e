"""Index speed at 100,000 instances, beside the same operations at 1,000, on SQLite and on
PostgreSQL side by side (a measurement).

Builds, on each engine, two indexes (bulk insert: 1,000 and 100,000 instances, 100 per series),
then times on each the operations the node does: indexing one more instance the way the C-STORE
handler does (`index_instance`, one commit each; SQLite with synchronous=FULL), the scheduler's
completion query, the retention candidate query, a study listing and an instance lookup by SOP
Instance UID. Prints the median and p95 per operation, the 100k / 1k ratio per engine, and the
PostgreSQL / SQLite ratio at 100k.

PostgreSQL is a throw-away server this script starts on 127.0.0.1 (Debian's ``postgresql``
binaries, as the tests do) with the server defaults for durability (fsync on, synchronous
commit), or the server at ``--postgres-url`` (an empty database).

    python benchmarks/index.py [--large 100000] [--samples 200] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select, text

from dicom_ai.cache.db import Instance, Patient, Series, Study, open_index, utcnow
from dicom_ai.cache.index import InstanceMeta, index_instance
from dicom_ai.cache.retention import removable_series
from dicom_ai.config import CompletionSettings
from dicom_ai.schedule.completion import schedule_complete_series

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pgserver  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"
PER_SERIES = 100


def build(url: str, n: int):
    sessions = open_index(url)
    n_series = n // PER_SERIES
    old = utcnow() - dt.timedelta(days=1)
    with sessions.begin() as s:
        s.execute(insert(Patient), [{"id": 1, "patient_id": "P", "patient_name": "N"}])
        s.execute(insert(Study), [{"id": k + 1, "study_instance_uid": f"1.2.{k}", "patient_fk": 1}
                                  for k in range(n_series)])
        s.execute(insert(Series), [{"id": k + 1, "series_instance_uid": f"1.3.{k}", "study_fk": k + 1,
                                    "modality": "CT", "state": "complete", "last_received_at": old}
                                   for k in range(n_series)])
        s.execute(insert(Instance), [{"sop_instance_uid": f"1.4.{i}", "sop_class_uid": CT,
                                      "series_fk": i // PER_SERIES + 1, "transfer_syntax_uid": "1.2.840.10008.1.2",
                                      "path": f"x/{i}", "size": 1, "received_at": old} for i in range(n)])
        if s.bind.dialect.name == "postgresql":  # rows given their ids: move the key sequences past them
            for table in ("patients", "studies", "series", "instances"):
                s.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
    return sessions


def timed(fn, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def measure(sessions, samples: int) -> dict[str, list[float]]:
    def add(i):
        meta = InstanceMeta("P", "N", "1.9", "", "", "", "1.9.1", "CT", "", "", 1, CT, f"1.9.1.{i}", i,
                            "1.2.840.10008.1.2")
        index_instance(sessions, meta, f"y/{i}", 1, "A")

    def lookup(i):
        with sessions() as s:
            s.scalar(select(Instance).where(Instance.sop_instance_uid == f"1.4.{i * 7}"))

    def studies(_):
        with sessions() as s:
            s.execute(select(Study.study_instance_uid).order_by(Study.id.desc()).limit(50)).all()

    return {
        "index one instance (C-STORE path)": timed(add, samples),
        "completion tick (no series due)": timed(
            lambda i: schedule_complete_series(sessions, [], CompletionSettings(stable_seconds=3600), {CT}),
            samples),
        "retention candidates": timed(lambda i: removable_series(sessions), max(samples // 10, 5)),
        "list 50 latest studies": timed(studies, samples),
        "find instance by SOP Instance UID": timed(lookup, samples),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--postgres-url", help="an empty PostgreSQL database (default: start a server)")
    args = ap.parse_args()
    server = None
    if args.postgres_url is None:
        server = pgserver.PostgresServer(durable=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="dicom-ai-index-") as tmp:
            results: dict[str, dict[int, dict[str, list[float]]]] = {"SQLite": {}, "PostgreSQL": {}}
            for engine in results:
                for n in (args.small, args.large):
                    if engine == "SQLite":
                        url = f"sqlite:///{Path(tmp) / f'i{n}.sqlite'}"
                    elif server is not None:
                        url = server.database("bench")
                    else:
                        url = args.postgres_url
                        if n != args.small:
                            break  # one given database: the 1k index only
                    t = time.perf_counter()
                    sessions = build(url, n)
                    print(f"{engine}: built {n:,} instances in {time.perf_counter() - t:.1f} s")
                    results[engine][n] = measure(sessions, args.samples)
                    sessions.kw["bind"].dispose()
    finally:
        if server is not None:
            server.stop()

    def p50(engine: str, n: int, op: str) -> float:
        return statistics.median(results[engine][n][op]) * 1000

    def p95(engine: str, n: int, op: str) -> float:
        got = sorted(results[engine][n][op])
        return got[int(0.95 * (len(got) - 1))] * 1000

    small, large = args.small, args.large
    print(f"\n{'operation':36s} {'engine':10s} {'1k p50 ms':>10s} {'100k p50 ms':>12s} {'100k p95 ms':>12s}"
          f" {'100k/1k':>8s} {'PG/SQLite':>10s}")
    for op in results["SQLite"][small]:
        for engine in results:
            if large not in results[engine]:
                continue
            ratio = p50(engine, large, op) / p50("SQLite", large, op)
            print(f"{op:36s} {engine:10s} {p50(engine, small, op):10.2f} {p50(engine, large, op):12.2f}"
                  f" {p95(engine, large, op):12.2f} {p50(engine, large, op) / p50(engine, small, op):8.2f}"
                  f" {ratio:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

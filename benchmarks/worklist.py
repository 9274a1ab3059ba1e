"""Worklist page load time with 1,000 studies in the index, beside 10 (a measurement).

Fills an index with N studies (patient, study, one 300-instance CT series, a done job with lung
findings, a SEG and an SR each with a delivery), serves the web app with uvicorn on loopback and
times ``GET /`` (the full HTML page) and ``GET /api/studies`` with a plain HTTP client holding a
session cookie (as a browser after logging in; HTTP Basic would add a ~40 ms scrypt check each):
median and p95 of 20 loads, and the ratio to the same with 10 studies.

    python benchmarks/worklist.py [--studies 1000] [--loads 20]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from sqlalchemy import insert

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402

from dicom_ai.cache.db import Delivery, Instance, Job, Patient, Result, Series, Study, open_index, utcnow  # noqa: E402
from dicom_ai.config import load_settings  # noqa: E402
from dicom_ai.web.app import create_app  # noqa: E402
from dicom_ai.web.auth import add_user  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"
PER_SERIES = 300


def fill(sessions, n: int) -> None:
    now = utcnow()
    findings = {"Left lung": {"volume_ml": 1850.0, "mean_hu": -808.0}, "Right lung": {"volume_ml": 913.0, "mean_hu": -790.0}}
    with sessions.begin() as s:
        s.execute(insert(Patient), [{"id": k + 1, "patient_id": f"P{k}", "patient_name": f"DOE^{k}"} for k in range(n)])
        s.execute(insert(Study), [{"id": k + 1, "study_instance_uid": f"1.2.{k}", "patient_fk": k + 1,
                                   "study_date": f"2024{1 + k % 12:02d}{1 + k % 28:02d}", "accession_number": f"A{k}",
                                   "description": "CT CHEST"} for k in range(n)])
        s.execute(insert(Series), [{"id": k + 1, "series_instance_uid": f"1.3.{k}", "study_fk": k + 1, "modality": "CT",
                                    "state": "complete", "completion_signal": "association_release",
                                    "completed_at": now} for k in range(n)])
        s.execute(insert(Instance), [{"sop_instance_uid": f"1.4.{i}", "sop_class_uid": CT, "series_fk": i // PER_SERIES + 1,
                                      "transfer_syntax_uid": "1.2.840.10008.1.2", "path": f"x/{i}", "size": 1}
                                     for i in range(n * PER_SERIES)])
        s.execute(insert(Job), [{"id": k + 1, "series_fk": k + 1, "model_name": "dicom-ai-lung", "model_version": "1.0.0",
                                 "model_path": "/m", "state": "done", "findings": findings, "timings": {}}
                                for k in range(n)])
        s.execute(insert(Result), [{"id": 2 * k + j + 1, "job_fk": k + 1, "kind": kind, "sop_class_uid": CT,
                                    "sop_instance_uid": f"1.5.{k}.{j}", "series_instance_uid": f"1.6.{k}.{j}", "path": "x"}
                                   for k in range(n) for j, kind in enumerate(("SEG", "SR"))])
        s.execute(insert(Delivery), [{"result_fk": r + 1, "destination": "pacs",
                                      "state": "failed" if r % 97 == 0 else "delivered"} for r in range(2 * n)])


def serve(n: int, tmp: Path) -> tuple[str, object]:
    import uvicorn

    settings = load_settings(None, node={"data_dir": str(tmp / f"var{n}")})
    settings.node.data_dir.mkdir(parents=True)
    sessions = open_index(settings.database_url)
    fill(sessions, n)
    add_user(sessions, "bench", "reader", "bench")
    port = peers.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, sessions), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def login(base: str) -> urllib.request.OpenerDirector:
    """A client holding a session cookie, as a browser would after logging in."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    opener.open(base + "/login", data=urllib.parse.urlencode({"username": "bench", "password": "bench"}).encode())
    return opener


def load(opener: urllib.request.OpenerDirector, url: str, loads: int) -> list[float]:
    out = []
    for _ in range(loads + 1):  # the first warms up
        t = time.perf_counter()
        with opener.open(url) as r:
            r.read()
        out.append(time.perf_counter() - t)
    return out[1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--loads", type=int, default=20)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="dicom-ai-worklist-") as tmp:
        for n in (10, args.studies):
            base, server = serve(n, Path(tmp))
            opener = login(base)
            results[n] = {"GET / (worklist page)": load(opener, base + "/", args.loads),
                          "GET /api/studies": load(opener, base + "/api/studies", args.loads)}
            server.should_exit = True
    print(f"\n{'request':24s} {'10 p50 ms':>10s} {f'{args.studies} p50 ms':>12s} {f'{args.studies} p95 ms':>12s} {'ratio':>7s}")
    for what in results[10]:
        small = statistics.median(results[10][what]) * 1000
        big = sorted(results[args.studies][what])
        p50, p95 = statistics.median(big) * 1000, big[int(0.95 * (len(big) - 1))] * 1000
        print(f"{what:24s} {small:10.1f} {p50:12.1f} {p95:12.1f} {p50 / small:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

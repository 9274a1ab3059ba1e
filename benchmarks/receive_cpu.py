"""CPU time per received instance: the C-STORE handler beside pynetdicom's floor (a measurement).

Runs the node's C-STORE SCP (:class:`dicom_ai.receive.scp.StorageSCP`, as a receiver process
runs it: the index opened with ``receiver_index``, SQLite ``synchronous=NORMAL``, and the file
and its folder fsync'd before each answer) in this process on loopback, and sends it the
275-slice LIDC-IDRI-0314 series with DCMTK ``storescu`` over one association, in two modes,
in turn:

* **handler**: the node's own C-STORE handler (write, parse, check, index, answer);
* **no-op**: a handler that answers success at once and stores nothing: what pynetdicom and
  the node's transport (its upper layer, DIMSE assembly and the association thread) cost alone.

For each it prints instances/s, this process's CPU time per instance (user and system, from
``getrusage``), the sender's (``storescu``, a child process) for scale, and the handler's
share: (handler - no-op) / handler. The uncompressed series is the one in ``../shared/data``
(Implicit VR Little Endian); the JPEG-LS one is the repository's demo copy, sent with ``-xt``.
Put ``--tmp`` on the disk the node would use: on tmpfs an fsync costs nothing.

    python benchmarks/receive_cpu.py [--runs 3] [--cases uncompressed,JPEG-LS] [--tmp /var/tmp]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402
from ingest import print_table  # noqa: E402  (benchmarks/, the script's folder)

from dicom_ai.cache.db import open_index, receiver_index  # noqa: E402
from dicom_ai.cache.store import FileStore  # noqa: E402
from dicom_ai.config import load_settings  # noqa: E402
from dicom_ai.receive.scp import StorageSCP  # noqa: E402

CASES = {
    "uncompressed": (peers.LIDC_SERIES, None),
    "JPEG-LS": (REPO / "demo" / "ct_chest_LIDC-IDRI-0314" / "image", "-xt"),
}
MODES = ("handler", "no-op")


def _cpu() -> tuple[float, float, float]:
    """(user, system) CPU seconds of this process, and the CPU seconds of its ended children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime, own.ru_stime, children.ru_utime + children.ru_stime


def one_transfer(files: list[Path], propose: str | None, mode: str, tmp: Path) -> dict[str, float]:
    """Send ``files`` to a fresh SCP in this process; its rate and CPU ms per instance."""
    with tempfile.TemporaryDirectory(prefix="dicom-ai-receive-cpu-", dir=tmp) as workdir:
        settings = load_settings(
            None,
            node={"ae_title": "DICOM_AI", "port": peers.free_port(), "bind_address": "127.0.0.1",
                  "data_dir": str(Path(workdir) / "var")},
            peers=[{"ae_title": "STORESCU", "host": "127.0.0.1"}],
        )
        open_index(settings.database_url)  # creates the schema, as the node does at start
        scp = StorageSCP(settings, FileStore(settings.node.data_dir), receiver_index(settings.database_url))
        if mode == "no-op":
            scp._on_store = lambda event: 0x0000  # type: ignore[method-assign]  # bound by start()
        scp.start()
        try:
            time.sleep(0.5)  # the SCP's threads settle before the clock starts
            user0, sys0, child0 = _cpu()
            t0 = time.perf_counter()
            out = peers.storescu("127.0.0.1", settings.node.port, files, aec="DICOM_AI",
                                 extra_args=[propose] if propose else [])
            wall = time.perf_counter() - t0
            user1, sys1, child1 = _cpu()
        finally:
            scp.stop()
        if out.returncode != 0:
            raise RuntimeError(f"storescu exited {out.returncode}:\n{(out.stdout + out.stderr)[-2000:]}")
        if mode == "handler":
            stored = sum(1 for _ in (Path(workdir) / "var" / "instances").rglob("*.dcm"))
            if stored != len(files):
                raise RuntimeError(f"{stored} of {len(files)} instances stored")
    per = 1e3 / len(files)
    return {"inst/s": len(files) / wall, "user": (user1 - user0) * per, "sys": (sys1 - sys0) * per,
            "cpu": (user1 - user0 + sys1 - sys0) * per, "sender": (child1 - child0) * per}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--tmp", type=Path, default=None, help="parent folder of the SCP's storage")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if args.runs < 1 or not cases or any(c not in CASES for c in cases):
        ap.error(f"--runs at least 1; --cases of {', '.join(CASES)}")
    print(f"LIDC-IDRI-0314, 1 association, DCMTK storescu over loopback, median of {args.runs} run(s)")
    for case in cases:
        folder, propose = CASES[case]
        files = sorted(p for p in folder.iterdir() if p.is_file())
        rows: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for _ in range(args.runs):
            for mode in MODES:  # in turn: the machine's drift touches both alike
                rows[mode].append(one_transfer(files, propose, mode, args.tmp))
        med = {m: {k: statistics.median(r[k] for r in rows[m]) for k in rows[m][0]} for m in MODES}
        print(f"\n{case} ({propose or 'storescu default'}), {len(files)} instances")
        print_table(f"{'mode':8s} {'inst/s':>8s} {'CPU ms':>7s} {'user':>6s} {'sys':>6s} {'sender':>7s}",
                    (f"{m:8s} {r['inst/s']:8.1f} {r['cpu']:7.2f} {r['user']:6.2f} {r['sys']:6.2f} {r['sender']:7.2f}"
                     for m, r in med.items()))
        share = (med["handler"]["cpu"] - med["no-op"]["cpu"]) / med["handler"]["cpu"]
        print(f"the handler's share of the receiver's CPU: {share:.2f}; handler / no-op CPU: "
              f"{med['handler']['cpu'] / med['no-op']['cpu']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The demo: a real chest CT, bundled in the repository, through the whole node.

``dicom-ai demo`` starts a node on loopback, sends ``demo/ct_chest_LIDC-IDRI-0314`` to it by
C-STORE, waits until the SEG and SR are delivered, prints where they went and the lung volumes,
and writes ``preview.png`` (the segmentation over a few slices). The PACS is Orthanc when the
``Orthanc`` binary is installed (started on free loopback ports with a temporary configuration
and stopped afterwards), otherwise a folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from dicom_ai.cache.db import Delivery, Job, Result
from dicom_ai.cache.states import DeliveryState, JobState
from dicom_ai.config import Settings, load_settings, repo_root
from dicom_ai.evaluate.series import expand_paths
from dicom_ai.export.scu import store_files
from dicom_ai.node import Node
from dicom_ai.report.findings import Findings

DEMO_SERIES = repo_root() / "demo" / "ct_chest_LIDC-IDRI-0314" / "image"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoOrthanc:
    """A throw-away Orthanc on loopback (temporary storage, no authentication, local only)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = "ORTHANC"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> DemoOrthanc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicom-ai-demo", "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": self.aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpBindAddress": "127.0.0.1",
            "DicomCheckCalledAet": False, "Plugins": [],
        }
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "ab")
        orthanc = shutil.which("Orthanc")
        assert orthanc is not None  # run_demo starts this only when Orthanc is installed
        self.proc = subprocess.Popen([orthanc, str(cfg)], stdout=log, stderr=log,
                                     env=dict(os.environ, TCP_NODELAY="1"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Orthanc did not start; see {self.workdir / 'orthanc.log'}")

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as rsp:
            return json.loads(rsp.read())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_demo(out_dir: Path, console: Console, timeout: float = 900) -> int:
    """Run the demo; returns a process exit code (0: SEG and SR delivered)."""
    out_dir = out_dir.resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    orthanc = None
    if shutil.which("Orthanc"):
        orthanc = DemoOrthanc(out_dir / "orthanc").start()
        dest = {"name": "orthanc", "kind": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1",
                "port": orthanc.dicom_port}
        console.print(f"PACS: Orthanc on 127.0.0.1 (DICOM {orthanc.dicom_port}, "
                      f"web http://127.0.0.1:{orthanc.http_port}/app/explorer.html)")
    else:
        dest = {"name": "folder", "kind": "folder", "path": str(out_dir / "results")}
        console.print(f"PACS: none installed; results go to the folder {out_dir / 'results'}")
    settings: Settings = load_settings(
        None,
        node={"ae_title": "DICOM_AI", "port": free_port(), "bind_address": "127.0.0.1",
              "data_dir": str(out_dir / "var")},
        peers=[{"ae_title": "DEMO_SCU", "host": "127.0.0.1"}],
        completion={"stable_seconds": 3, "check_interval_seconds": 0.5},
        destinations=[dest],
        delivery={"retry_initial_seconds": 2, "retry_max_seconds": 10},
        worker={"poll_seconds": 0.5},
    )
    node = Node(settings)
    try:
        node.start()
        files = expand_paths([DEMO_SERIES])
        files = [f for f in files if f.suffix == ".dcm"]
        console.print(f"sending {len(files)} CT slices (LIDC-IDRI-0314) to DICOM_AI@127.0.0.1:{settings.node.port}")
        t0 = time.monotonic()
        outcomes = store_files(files, "127.0.0.1", settings.node.port, aet="DEMO_SCU", aec="DICOM_AI")
        sent = sum(o.ok for o in outcomes)
        console.print(f"sent {sent}/{len(files)} in {time.monotonic() - t0:.1f} s; waiting for the series to "
                      f"complete ({settings.completion.stable_seconds:g} s idle), inference and delivery")
        if sent != len(files):
            return 1
        return _wait_and_report(node, out_dir, console, timeout, t_sent=time.monotonic())
    finally:
        node.stop()
        if orthanc:
            orthanc.stop()


def _wait_and_report(node, out_dir: Path, console: Console, timeout: float, t_sent: float) -> int:
    deadline = time.monotonic() + timeout
    with console.status("working…"):
        while time.monotonic() < deadline:
            with node.sessions() as s:
                job = s.query(Job).order_by(Job.id.desc()).first()
                states = [d.state for d in s.query(Delivery).all()]
                if job is not None and job.state == JobState.FAILED:
                    console.print(f"[red]job failed:[/red] {job.reason}")
                    return 1
                # the preview is written after the results are committed: its time in timings
                if job is not None and job.state == JobState.DONE and "preview" in (job.timings or {}) \
                        and states and all(x in (DeliveryState.DELIVERED, DeliveryState.FAILED) for x in states):
                    break
            time.sleep(0.5)
        else:
            console.print("[red]timed out waiting for results[/red]")
            return 1
    elapsed = time.monotonic() - t_sent
    with node.sessions() as s:
        job = s.query(Job).order_by(Job.id.desc()).first()
        console.print(f"\n[bold]job {job.id} {job.state}[/bold] ({job.model_name} {job.model_version}), "
                      f"{elapsed:.0f} s after the last slice was acknowledged")
        console.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in job.timings.items()))
        for name, f in Findings.from_json(job.findings):
            assert f.volume_ml is not None  # a segmentation label's finding has its volume
            console.print(f"  {name}: {f.volume_ml / 1000:.2f} L ({f.volume_ml:.0f} mL), mean {f.mean_hu} HU"
                          + "".join(f" [red]implausible: {escape(r)}[/red]" for r in f.implausible))
        ok = True
        for r in s.query(Result).filter(Result.job_fk == job.id):
            for d in r.deliveries:
                ok &= d.state == DeliveryState.DELIVERED
                console.print(f"  {r.kind} {r.sop_instance_uid} -> {d.destination}: {d.state} ({d.last_status})")
        preview = node.store.abspath(f"results/{job.id}/preview.png")
        if preview.exists():
            shutil.copyfile(preview, out_dir / "preview.png")
            console.print(f"preview: {out_dir / 'preview.png'}")
    return 0 if ok else 1

"""16 simultaneous associations, each sending its own series; C-ECHO answered meanwhile."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import peers
import pytest
from nodeproc import NodeProcess

from dicom_ai.cache.db import Instance, Series, open_index

pytestmark = pytest.mark.integration
N_ASSOC = 16


def _copies(src: Path, dest: Path, n: int) -> list[Path]:
    """``n`` copies of a real series, each with its own Study, Series and SOP Instance UIDs."""
    folders = [dest / f"series{k:02d}" for k in range(n)]
    for folder in folders:
        peers.copy_series(src, folder)
    return folders


def test_sixteen_associations_at_once_and_echo_stays_answered(tmp_path, dcmtk, shared_data):
    folders = _copies(shared_data / "ct_abdomen_CRLM-CT-1006" / "image", tmp_path / "src", N_ASSOC)
    with NodeProcess(tmp_path / "node", stable_seconds=600, extra={"node": {"receivers": 2}}) as node:
        procs = [
            subprocess.Popen(
                [peers.dcmtk_tool("storescu"), "-aec", node.ae_title, "-aet", "STORESCU",
                 "+sd", "127.0.0.1", str(node.port), str(folder)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=peers.tcp_nodelay_env(),
            )
            for folder in folders
        ]
        echoes = []
        while any(p.poll() is None for p in procs):
            t = time.monotonic()
            echoes.append((peers.echoscu("127.0.0.1", node.port, aec=node.ae_title, aet="STORESCU",
                                         timeout=30).returncode, time.monotonic() - t))
        outputs = [p.communicate()[0].decode(errors="replace") for p in procs]
        assert [p.returncode for p in procs] == [0] * N_ASSOC, outputs
        assert echoes and all(code == 0 for code, _ in echoes), echoes
        print(f"{len(echoes)} C-ECHOs during the transfer, slowest {max(s for _, s in echoes):.2f} s")
        sessions = open_index(f"sqlite:///{tmp_path / 'node' / 'var' / 'index.sqlite'}")
        with sessions() as s:
            assert s.query(Series).count() == N_ASSOC
            assert s.query(Instance).count() == N_ASSOC * 51
        # both receiver processes took associations from the one port
        accepted = [line.split()[3] for line in node.log_tail(10_000).splitlines()
                    if "association from STORESCU" in line and "accepted" in line]
        assert {"MainProcess", "dicom-ai-receiver-1"} <= set(accepted), accepted


def test_a_receiver_process_that_dies_is_replaced(tmp_path, dcmtk, shared_data):
    with NodeProcess(tmp_path / "node", stable_seconds=600, extra={"node": {"receivers": 2}}) as node:
        assert node.wait_for_log("receiver 1 started (pid", timeout=30), node.log_tail()
        pid = int(re.search(r"receiver 1 started \(pid (\d+)\)", node.log_tail(10_000)).group(1))
        os.kill(pid, signal.SIGKILL)
        assert node.wait_for_log("receiver 1 died", timeout=15), node.log_tail()
        deadline = time.monotonic() + 30  # the replacement announces itself too
        while node.log_path.read_text().count("receiver 1 started") < 2:
            assert time.monotonic() < deadline, node.log_tail()
            time.sleep(0.5)
        # the port keeps answering, and the replacement stores
        folder = shared_data / "ct_abdomen_CRLM-CT-1006" / "image"
        for _ in range(3):
            done = peers.storescu("127.0.0.1", node.port, sorted(folder.iterdir())[:5],
                                  aec=node.ae_title, aet="STORESCU")
            assert done.returncode == 0, done.stdout

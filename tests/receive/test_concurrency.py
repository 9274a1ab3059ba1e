"""Issue 3: 16 simultaneous associations, each sending its own series; C-ECHO answered meanwhile."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

import peers
from dicom_ai.cache.db import Instance, Series, open_index
from nodeproc import NodeProcess

pytestmark = pytest.mark.integration
N_ASSOC = 16


def _copies(src: Path, dest: Path, n: int) -> list[Path]:
    """``n`` copies of a real series, each with its own Study, Series and SOP Instance UIDs."""
    files = sorted(src.iterdir())
    folders = []
    for k in range(n):
        folder = dest / f"series{k:02d}"
        folder.mkdir(parents=True)
        study, series = generate_uid(), generate_uid()
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / f.name)
        folders.append(folder)
    return folders


def test_sixteen_associations_at_once_and_echo_stays_answered(tmp_path, dcmtk, shared_data):
    folders = _copies(shared_data / "ct_abdomen_CRLM-CT-1006" / "image", tmp_path / "src", N_ASSOC)
    with NodeProcess(tmp_path / "node", stable_seconds=600) as node:
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

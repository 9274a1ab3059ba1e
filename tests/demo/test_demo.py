"""The README's demo command, end to end, on the bundled real CT."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def test_demo_delivers_seg_and_sr_and_writes_preview(tmp_path, orthanc):
    # the `orthanc` fixture only makes sure Orthanc is installed; the demo starts its own
    out = tmp_path / "demo-out"
    run = subprocess.run([sys.executable, "-m", "dicom_ai.cli", "demo", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    text = run.stdout + run.stderr
    assert run.returncode == 0, text
    assert "PACS: Orthanc" in text
    assert text.count("-> orthanc: delivered (0x0000 Success)") == 2, text
    assert "Left lung:" in text and "Right lung:" in text
    with Image.open(out / "preview.png") as img:
        assert img.width > 400 and img.height > 400

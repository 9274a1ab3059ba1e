"""The warm-up of result encoding: after :func:`dicom_ai.report.sr.warm_up`, the first SEG of a
real series in a process neither parses highdicom's tables nor sets off a full garbage
collection, the two costs of a first call; and the worker does it when it preloads its models.

Without it, the first SEG of a process parses highdicom's tables of the standard (about 22 MB
of JSON, a million new objects): about 0.25 s of parsing, and in the worker, where torch, the
model and the index keep some 470,000 objects alive, two full garbage collections over all of
them, another 0.5 s.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest

import dicom_ai.report.sr as sr_module
from dicom_ai.cache.db import open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.report.sr import warm_up
from dicom_ai.worker import JobRunner

from .conftest import LIDC

# A fresh interpreter: for the first and the second SEG of the 275-slice LIDC series, with or
# without the warm-up before them, the CPU seconds (steadier than wall time on a shared
# machine), whether highdicom's tables were parsed during it, and the full collections.
_FIRST_AND_SECOND = """
import gc, json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from highdicom._standard_utils import get_module_attribute_map
from report.conftest import lung_mask, make_manifest
from dicom_ai.infer.volume import load_series
from dicom_ai.report.seg import build_seg
from dicom_ai.report.sr import warm_up
volume = load_series(sorted(Path({lidc!r}).glob("*.dcm")))
mask, manifest = lung_mask(volume), make_manifest()
if {warm}:
    warm_up()
full = []
gc.callbacks.append(lambda phase, info: full.append(1) if phase == "start" and info["generation"] == 2 else None)
calls = []
for _ in range(2):
    misses, collections, t = get_module_attribute_map.cache_info().misses, len(full), time.process_time()
    build_seg(volume, mask, manifest, device_serial_number="TEST")
    calls.append({{"cpu": time.process_time() - t, "parsed": get_module_attribute_map.cache_info().misses - misses,
                  "full_collections": len(full) - collections}})
print(json.dumps(calls))
"""


def _first_and_second(warm: bool) -> list[dict]:
    code = _FIRST_AND_SECOND.format(tests=str(Path(__file__).resolve().parents[1]), lidc=str(LIDC), warm=warm)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.integration
def test_after_warm_up_the_first_seg_parses_no_table_and_collects_nothing_in_full() -> None:
    cold_first, cold_second = _first_and_second(warm=False)
    assert cold_first["parsed"] == 1 and cold_second["parsed"] == 0  # what the warm-up moves
    warm_first, warm_second = _first_and_second(warm=True)
    assert warm_first["parsed"] == warm_second["parsed"] == 0
    assert warm_first["full_collections"] == 0  # (the times are measured in benchmarks/e2e.py)


def test_warm_up_writes_a_seg_and_an_sr(monkeypatch) -> None:
    """It builds and encodes both objects (not only imports), so a change that breaks it fails
    here rather than only slowing the first job."""
    built = []
    for name in ("build_seg", "build_sr"):
        real = getattr(sr_module, name)
        monkeypatch.setattr(sr_module, name, lambda *a, _real=real, **k: built.append(_real(*a, **k)) or built[-1])
    seconds = warm_up()
    assert seconds > 0
    seg, sr = built
    assert isinstance(seg, hd.seg.Segmentation) and isinstance(sr, hd.sr.Comprehensive3DSR)
    assert len(seg.PerFrameFunctionalGroupsSequence) == 1  # the one non-empty slice
    assert str(sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID) == str(seg.StudyInstanceUID)
    assert hd._standard_utils.get_module_attribute_map.cache_info().currsize == 1


def _runner(tmp_path) -> JobRunner:
    settings = load_settings(None, node={"data_dir": str(tmp_path / "var")}, worker={"device": "cpu"})
    return JobRunner(settings, open_index(settings.database_url), FileStore(settings.node.data_dir))


def test_preload_warms_up_the_encoding(tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="dicom_ai")
    calls = []
    monkeypatch.setattr(sr_module, "warm_up", lambda: calls.append(1) or 0.25)
    _runner(tmp_path).preload()
    assert calls == [1]
    assert "result encoding warmed up in 0.2 s" in caplog.text


def test_a_failed_warm_up_is_logged_not_raised(tmp_path, monkeypatch, caplog) -> None:
    def broken() -> float:
        raise RuntimeError("no tables")

    monkeypatch.setattr(sr_module, "warm_up", broken)
    _runner(tmp_path).preload()
    assert "result encoding not warmed up: no tables" in caplog.text

"""``[[destinations]] results``: a destination that asks for ``sc`` gets the Secondary Capture
images with the segments burned in (one per source slice) through the outbox, and only what it
asks for; the other destinations still get the SEG and SR only."""

from __future__ import annotations

import pydicom
import pytest

from dicom_ai.cache.db import Delivery, Result, open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.export.outbox import deliver_due

from .conftest import file_and_index, run_test_job
from .test_worker_plausibility import Air, _package

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def test_config_rejects_unknown_result_kinds(tmp_path) -> None:
    with pytest.raises(ValueError, match="results"):
        load_settings(None, destinations=[{"name": "x", "kind": "folder", "path": str(tmp_path), "results": ["png"]}])
    with pytest.raises(ValueError, match="results"):
        load_settings(None, destinations=[{"name": "x", "kind": "folder", "path": str(tmp_path), "results": []}])
    default = load_settings(None, destinations=[{"name": "x", "kind": "folder", "path": str(tmp_path)}])
    assert default.destinations[0].results == ["seg", "sr"]


@pytest.mark.integration
def test_sc_goes_to_the_destination_that_asks(tmp_path, lidc_series, orthanc) -> None:
    settings = load_settings(
        None, node={"data_dir": str(tmp_path / "var")}, worker={"device": "cpu"},
        destinations=[{"name": "plain", "kind": "folder", "path": str(tmp_path / "out")},
                      {"name": "no-seg", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port,
                       "results": ["sc", "sr"]}])
    store, sessions = FileStore(settings.node.data_dir), open_index(settings.database_url)
    by_z = sorted(lidc_series, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for i, f in enumerate(by_z[150:158]):
        file_and_index(sessions, store, pydicom.dcmread(f), i + 1, patient_id="P8", patient_name="SC^TEST",
                       accession="ACC8")
    run_test_job(settings, sessions, store, _package(tmp_path / "air", Air()))
    with sessions() as s:
        kinds = sorted(r.kind for r in s.query(Result))
        assert kinds == ["SC"] * 8 + ["SEG", "SR"]
        sent = {(d.destination, d.result.kind) for d in s.query(Delivery)}
    assert sent == {("plain", "SEG"), ("plain", "SR"), ("no-seg", "SC"), ("no-seg", "SR")}
    assert deliver_due(sessions, store, settings) == 2 + 8 + 1
    with sessions() as s:
        assert {d.state for d in s.query(Delivery)} == {"delivered"}
    classes = sorted(orthanc.get(f"/instances/{i}/tags?simplify")["SOPClassUID"] for i in orthanc.get("/instances"))
    assert classes == [SC_CLASS] * 8 + ["1.2.840.10008.5.1.4.1.1.88.34"]  # the SC pages and the SR, no SEG
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{r}.dcm" for r in _uids(sessions, ("SEG", "SR")))


def _uids(sessions, kinds) -> list[str]:
    with sessions() as s:
        return [r.sop_instance_uid for r in s.query(Result) if r.kind in kinds]

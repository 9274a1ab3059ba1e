"""Plausibility on every segmentation job: the real worker (JobRunner) runs real TorchScript
model packages on real LIDC slices; an implausible result is logged in one line without patient
data, kept in the job's findings (study on attention) and said in the SR it writes."""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import torch

from dicom_ai.cache.db import Job, Series, open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings
from dicom_ai.package.manifest import sha256_of, write_manifest
from dicom_ai.web.data import findings_attention
from dicom_ai.worker import JobRunner

from ..report.conftest import make_manifest
from .conftest import file_and_index

PATIENT_NAME = "LOE^LINDA"


class Air(torch.nn.Module):
    """Class 1 (the manifest's first label) wherever the windowed input is dark (air below
    about -300 HU), never class 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(x, 0.5), 1.0 - x, torch.zeros_like(x)], dim=1)


class Nothing(torch.nn.Module):
    """Background everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(x), torch.zeros_like(x), torch.zeros_like(x)], dim=1)


def _package(folder: Path, module: torch.nn.Module) -> Path:
    """A TorchScript lung package (labels: right lung 2, left lung 1, in this order: classes 1
    and 2 of the network) with plausible ranges: the right lung must be 100-200 L (no air region
    of 12 slices is), the left 300-6000 mL, left / right 0.33-3."""
    folder.mkdir(parents=True)
    torch.jit.script(module).save(str(folder / "model.ts"))
    labels = [lb.model_dump() for lb in make_manifest(values=(2, 1)).labels]  # right 2, left 1
    labels[0]["plausible_volume_ml"] = (100_000.0, 200_000.0)
    labels[1]["plausible_volume_ml"] = (300.0, 6000.0)
    manifest = make_manifest(values=(2, 1), name="dicom-ai-test-lung", version="2.0.0", runtime="torchscript",
                             weights="model.ts", sha256=sha256_of(folder / "model.ts"), spacing=(4.0, 8.0, 8.0),
                             patch_size=(8, 32, 32), labels=labels, network=None,
                             plausible_volume_ratios=[{"numerator": 1, "denominator": 2, "range": (0.33, 3.0)}])
    write_manifest(folder, manifest)
    return folder


@pytest.fixture
def node(tmp_path, lidc_series):
    """Settings, index and store with one series of 12 adjacent LIDC slices (patient renamed)."""
    settings = load_settings(None, node={"data_dir": str(tmp_path / "var")}, worker={"device": "cpu"},
                             destinations=[{"name": "pacs", "kind": "folder", "path": str(tmp_path / "out")}])
    store = FileStore(settings.node.data_dir)
    sessions = open_index(settings.database_url)
    by_z = sorted(lidc_series, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for i, f in enumerate(by_z[150:162]):
        ds = pydicom.dcmread(f)
        ds.PatientName = PATIENT_NAME
        file_and_index(sessions, store, ds, i + 1, patient_id="P9", patient_name=PATIENT_NAME, accession="ACC9")
    with sessions.begin() as s:
        s.query(Series).one().state = "complete"
    return settings, sessions, store


def _run(node, package: Path) -> int:
    settings, sessions, store = node
    with sessions.begin() as s:
        job = Job(series=s.query(Series).one(), model_name="dicom-ai-test-lung", model_version="2.0.0",
                  model_path=str(package), state="running")
        s.add(job)
        s.flush()
        job_id = job.id
    JobRunner(settings, sessions, store).run(job_id)
    return job_id


def _sr_comments(store: FileStore, job_id: int) -> list[list[str]]:
    sr = hd.sr.srread(store.abspath(store.result_relpath(job_id, "SR")))
    return [[i.TextValue for i in g[0].ContentSequence if i.ValueType == "TEXT"
             and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
            for g in sr.content.get_volumetric_roi_measurement_groups()]


def test_implausible_jobs_are_logged_kept_and_said(tmp_path, node, caplog) -> None:
    settings, sessions, store = node
    caplog.set_level(logging.INFO, logger="dicom_ai")
    air = _run(node, _package(tmp_path / "air", Air()))
    nothing = _run(node, _package(tmp_path / "nothing", Nothing()))

    with sessions() as s:
        jobs = {j.id: j for j in s.query(Job)}
        assert [jobs[air].state, jobs[nothing].state] == ["done", "done"], [jobs[air].reason, jobs[nothing].reason]
        found = jobs[air].findings
        right_ml = found["Right lung"]["volume_ml"]
        assert 0 < right_ml < 100_000 and found["Right lung"]["mean_hu"] < -300
        too_small = f"Right lung volume {right_ml:.0f} mL is below the plausible range 100000 to 200000 mL"
        not_found = "Left lung not found (plausible volume 300 to 6000 mL)"  # the ratio is not said again
        assert found["Left lung"] == {"volume_ml": 0.0, "mean_hu": None, "implausible": [not_found]}
        assert found["Right lung"]["implausible"] == [too_small]
        none = "no Right lung or Left lung found"
        assert jobs[nothing].findings == {"Right lung": {"volume_ml": 0.0, "mean_hu": None, "implausible": [none]},
                                          "Left lung": {"volume_ml": 0.0, "mean_hu": None, "implausible": [none]}}
        assert findings_attention(jobs[air].findings) and findings_attention(jobs[nothing].findings)

    warnings = [r.getMessage() for r in caplog.records if r.name == "dicom_ai.worker" and r.levelno == logging.WARNING]
    assert warnings == [f"job {air}: implausible result of dicom-ai-test-lung 2.0.0: {too_small}; {not_found}",
                        f"job {nothing}: implausible result of dicom-ai-test-lung 2.0.0: {none}"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "LOE" not in logged and "LINDA" not in logged

    # SR groups in manifest label order: right lung, left lung
    assert _sr_comments(store, air) == [[f"Implausible result: {too_small}"], [f"Implausible result: {not_found}"]]
    assert _sr_comments(store, nothing) == [[f"Implausible result: {none}"]] * 2

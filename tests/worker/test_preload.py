"""``[worker] preload_models``: the worker loads the enabled models at start, so the first job
of a model does not wait for its weights, and a model that cannot be loaded does not stop it."""

from __future__ import annotations

import json
import logging
import shutil

from dicom_ai.cache.db import open_index
from dicom_ai.cache.store import FileStore
from dicom_ai.config import load_settings, repo_root
from dicom_ai.models.registry import seed_shipped
from dicom_ai.schedule.routing import enabled_models
from dicom_ai.worker import JobRunner


def _runner(tmp_path, **models):
    settings = load_settings(None, node={"data_dir": str(tmp_path / "var")}, worker={"device": "cpu"}, **models)
    sessions = open_index(settings.database_url)
    seed_shipped(sessions, settings)
    return settings, sessions, JobRunner(settings, sessions, FileStore(settings.node.data_dir))


def test_preload_loads_every_enabled_model_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dicom_ai")
    settings, sessions, runner = _runner(tmp_path)
    enabled = [str(m.path) for m in enabled_models(settings, sessions)]
    assert enabled  # the shipped lung model is active
    loads: list[str] = []
    load = runner._models.loader
    runner._models.loader = lambda path: loads.append(path) or load(path)
    runner.preload()
    assert loads == enabled and all(p in runner._models for p in enabled)
    runner.model(enabled[0])  # the first job of the model: already loaded
    assert loads == enabled
    assert "models loaded in" in caplog.text


def test_a_model_that_cannot_load_is_logged_and_skipped(tmp_path, caplog):
    broken = tmp_path / "broken-model"
    shutil.copytree(repo_root() / "models" / "lung-unet-2d", broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["name"] = "broken"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    weights = next(p for p in broken.iterdir() if p.name == manifest["weights"])
    weights.write_bytes(b"not weights")  # the checksum no longer matches
    caplog.set_level(logging.INFO, logger="dicom_ai")
    _, _, runner = _runner(tmp_path, models=[{"path": str(broken)}])
    runner.preload()
    assert "model broken" in caplog.text and "not preloaded" in caplog.text

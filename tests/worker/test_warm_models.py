"""Warm models: loaded models stay between jobs within a memory budget, LRU first out."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from dicom_ai.worker import WarmModels, model_bytes


def _fake(kib: int) -> SimpleNamespace:
    """A stand-in model with ``kib`` KiB of weights in RAM."""
    return SimpleNamespace(nbytes=kib * 1024, weights_device="cpu")


def test_models_stay_loaded_until_the_budget_needs_room(caplog):
    caplog.set_level(logging.INFO, logger="dicom_ai")
    loads: list[str] = []
    sizes = {"a": 400, "b": 400, "c": 400, "huge": 3072}  # KiB

    def loader(path):
        loads.append(path)
        return _fake(sizes[path])

    warm = WarmModels(1.0, loader)  # 1 MB of weights
    assert model_bytes(warm.get("a")) == 400 * 1024
    warm.get("b")
    warm.get("a")  # kept: no load, and now the most recently used
    assert loads == ["a", "b"]
    warm.get("c")  # 1200 KiB would not fit: b, the least recently used, leaves
    assert "b" not in warm and "a" in warm and "c" in warm
    assert "model b leaves memory" in caplog.text
    warm.get("b")
    assert loads == ["a", "b", "c", "b"]
    warm.get("huge")  # over budget alone: everything else leaves, it stays
    assert [p for p in ("a", "b", "c", "huge") if p in warm] == ["huge"]
    assert warm.used == 3072 * 1024


def test_gpu_and_ram_budgets_are_kept_apart(caplog):
    """A model on the GPU never pushes a RAM model out, and the other way round."""
    caplog.set_level(logging.INFO, logger="dicom_ai")
    where = {"cpu-a": "cpu", "cpu-b": "cpu", "gpu-a": "cuda", "gpu-b": "cuda"}

    def loader(path):
        model = _fake(600)
        model.weights_device = where[path]
        return model

    warm = WarmModels(1.0, loader, gpu_budget_mb=1.0)  # 1 MB each; two 600 KiB models do not fit one
    warm.get("cpu-a")
    warm.get("gpu-a")
    assert "cpu-a" in warm and "gpu-a" in warm  # 1.2 MB in all, but 600 KiB per device
    warm.get("gpu-b")
    assert "gpu-a" not in warm and "cpu-a" in warm and "GPU budget" in caplog.text
    warm.get("cpu-b")
    assert "cpu-a" not in warm and "gpu-b" in warm and "RAM budget" in caplog.text
    assert warm.used_on("cpu") == warm.used_on("cuda") == 600 * 1024


def test_the_shipped_model_fits_the_default_budget():
    from dicom_ai.config import default_model_path, load_settings
    from dicom_ai.infer.runtime import SegmentationModel

    model = SegmentationModel.load(default_model_path(), device="cpu")
    assert 0 < model_bytes(model) < load_settings(None).worker.model_memory_mb * 2**20

import datetime as dt
from pathlib import Path

import pytest

from dicom_ai.cache.db import Job, Series, open_index
from dicom_ai.cache.index import InstanceMeta, index_instance
from dicom_ai.cache.workers import requeue_jobs_of_ended_workers
from dicom_ai.config import CompletionSettings
from dicom_ai.package.manifest import Code, Label, ModelManifest, NetworkSpec
from dicom_ai.schedule.completion import schedule_complete_series
from dicom_ai.schedule.facts import SeriesFacts
from dicom_ai.schedule.routing import RoutableModel, Route, default_rule, passes

CT = "1.2.840.10008.5.1.4.1.1.2"


def _model(min_slices=3, body_parts=()):
    code = Code(value="1", scheme="SCT", meaning="x")
    manifest = ModelManifest(
        name="m", version="1", spacing=(1, 1, 1), window=(-1000, 400), patch_size=(8, 8, 8),
        network=NetworkSpec(), labels=[Label(value=1, name="a", category=code, type=code)],
        min_slices=min_slices,
    )
    return RoutableModel(Path("/m"), manifest, ("CT",), tuple(body_parts))


def _meta(i, series="1.2.3.4", modality="CT"):
    return InstanceMeta("P1", "Doe^J", "1.2.3", "20250101", "A1", "chest", series, modality, "CHEST",
                        "axial", 1, CT, f"1.2.3.4.{i}", i, "1.2.840.10008.1.2")


def _facts(modality="CT", body_part="CHEST", n_images=10, **kw):
    base = dict(series_uid="1.2", study_uid="1.1", modality=modality, body_part=body_part,
                description="", calling_ae_title="", sop_class_uid=CT, orientation="AXIAL",
                slice_thickness=1.0, n_images=n_images, n_localizers=0, image_type="ORIGINAL\\PRIMARY\\AXIAL")
    return SeriesFacts(**{**base, **kw})


def match(model, modality, body_part, n_images):
    return passes(default_rule(model), _facts(modality, body_part, n_images))


def _routes(model):
    return [Route(default_rule(model), model)]


def _completion(stable=10.0, **kw):
    return CompletionSettings(stable_seconds=stable, **kw)


def test_match_reasons():
    m = _model(body_parts=["CHEST"])
    assert match(m, "CT", "CHEST", 10) is None
    assert match(m, "CT", "", 10) is None
    assert "modality MR" in match(m, "MR", "CHEST", 10)
    assert "body part HEAD" in match(m, "CT", "HEAD", 10)
    assert "2 images >= 3" in match(m, "CT", "CHEST", 2)


def test_body_region_from_the_manifest(tmp_path):
    from dicom_ai.config import ModelEntry, load_settings
    from dicom_ai.schedule.routing import enabled_models

    lung = Path(__file__).resolve().parents[2] / "models" / "lung-unet"
    default, anything = enabled_models(
        load_settings(None, models=[ModelEntry(path=lung), ModelEntry(path=lung, body_parts=[])])
    )
    for body_part in ("CHEST", "PARTIALBODY", ""):
        assert match(default, "CT", body_part, 100) is None
    assert "body part EXTREMITY" in match(default, "CT", "EXTREMITY", 100)
    assert match(anything, "CT", "EXTREMITY", 100) is None


def test_series_completes_after_stable_seconds_and_gets_one_job(index_url, tmp_path):
    sessions = open_index(index_url)
    for i in range(5):
        index_instance(sessions, _meta(i), f"x/{i}.dcm", 10, "STORESCU")
    model = _model()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert schedule_complete_series(sessions, _routes(model), _completion(), {CT}, now=now) == []
    created = schedule_complete_series(sessions, _routes(model), _completion(), {CT}, now=now + dt.timedelta(seconds=11))
    assert len(created) == 1
    with sessions() as s:
        series = s.query(Series).one()
        assert series.state == "complete" and series.completion_signal == "stable_seconds"
        assert "queued job" in series.routing_note
    # nothing new: no second job
    assert schedule_complete_series(sessions, _routes(model), _completion(), {CT}, now=now + dt.timedelta(seconds=30)) == []
    # a late instance re-opens the series; it completes again and is re-run
    index_instance(sessions, _meta(9), "x/9.dcm", 10, "STORESCU")
    with sessions() as s:
        assert s.query(Series).one().state == "receiving"
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=11)
    assert len(schedule_complete_series(sessions, _routes(model), _completion(), {CT}, now=later)) == 0  # job 1 still queued
    with sessions.begin() as s:
        s.query(Job).update({"state": "running"})
    assert len(requeue_jobs_of_ended_workers(sessions)) == 1  # running under no worker
    with sessions() as s:
        assert s.query(Job).one().state == "queued"


@pytest.mark.integration  # starts a short process, for a pid that has ended
def test_the_idle_timer_waits_while_the_sending_association_is_open(index_url):
    """Idle for stable_seconds but its association still open (this process, alive, neither
    released nor aborted): not complete, until the abort; nor when the newest instance came
    from an ended process; an open association holds it at most open_association_max_seconds."""
    import dataclasses
    import os
    import subprocess

    from dicom_ai.cache.index import mark_aborted

    sessions = open_index(index_url)
    ended = subprocess.Popen(["true"])
    ended.wait()
    for series, association in (("1.2.3.4", f"{os.getpid()}-1"), ("1.2.3.5", f"{ended.pid}-1"),
                                ("1.2.3.6", f"{os.getpid()}-2")):
        for i in range(3):
            meta = dataclasses.replace(_meta(i, series), sop_instance_uid=f"{series}.{i}", association=association)
            index_instance(sessions, meta, f"{series}/{i}.dcm", 10, "STORESCU")
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    complete = _completion(stable=10, use_association_release=False, open_association_max_seconds=60)

    def completed(at: dt.datetime) -> list[str]:
        schedule_complete_series(sessions, [], complete, {CT}, now=at)
        with sessions() as s:
            return sorted(x.series_instance_uid for x in s.query(Series).filter_by(state="complete"))

    assert completed(now + dt.timedelta(seconds=11)) == ["1.2.3.5"]  # its sender has ended
    mark_aborted(sessions, f"{os.getpid()}-1", ["1.2.3.4"])
    assert completed(now + dt.timedelta(seconds=12)) == ["1.2.3.4", "1.2.3.5"]
    assert completed(now + dt.timedelta(seconds=61)) == ["1.2.3.4", "1.2.3.5", "1.2.3.6"]  # held 60 s at most


def test_non_matching_series_records_why(index_url, tmp_path):
    sessions = open_index(index_url)
    index_instance(sessions, _meta(1, modality="MR"), "x/1.dcm", 10, "STORESCU")
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=11)
    assert schedule_complete_series(sessions, _routes(_model()), _completion(), {CT}, now=later) == []
    with sessions() as s:
        assert "modality MR" in s.query(Series).one().routing_note

"""Every routing rule condition, combine all/any, the localizer guard, per-study selection,
priority and disabled rules (unit level; tests/schedule/test_completion_e2e.py sends real series)."""

import dataclasses
import datetime as dt

import pytest

from dicom_ai.cache.db import Job, Series, open_index
from dicom_ai.cache.index import index_instance
from dicom_ai.config import Rule, load_settings
from dicom_ai.schedule.completion import schedule_complete_series
from dicom_ai.schedule.routing import decide, passes, routes
from dicom_ai.worker import claim_next_job

from .test_completion import CT, _facts, _meta, _model

MR = "1.2.840.10008.5.1.4.1.1.4"

# (rule fields, series facts that pass, series facts that fail, text of the failed condition)
CONDITIONS = [
    ({"modalities": ["CT"]}, {"modality": "CT"}, {"modality": "MR"}, "modality MR"),
    ({"body_parts": ["CHEST"]}, {"body_part": "CHEST"}, {"body_part": "HEAD"}, "body part HEAD"),
    ({"series_description": "lung|thorax"}, {"description": "THORAX 1mm"}, {"description": "Abdomen"},
     "series description 'Abdomen'"),
    ({"slice_thickness_mm": (0.5, 3)}, {"slice_thickness": 1.0}, {"slice_thickness": 5.0}, "slice thickness 5.0"),
    ({"orientations": ["AXIAL"]}, {"orientation": "AXIAL"}, {"orientation": "CORONAL"}, "orientation CORONAL"),
    ({"min_instances": 40}, {"n_images": 40}, {"n_images": 39}, "39 images >= 40"),
    ({"max_instances": 500}, {"n_images": 500}, {"n_images": 501}, "501 images <= 500"),
    ({"calling_ae_titles": ["CT1"]}, {"calling_ae_title": "CT1"}, {"calling_ae_title": "CT2"}, "calling AE title CT2"),
    ({"sop_classes": [CT]}, {"sop_class_uid": CT}, {"sop_class_uid": MR}, f"SOP class {MR}"),
]


@pytest.mark.parametrize("fields,good,bad,why", CONDITIONS, ids=[next(iter(c[0])) for c in CONDITIONS])
def test_each_condition(fields, good, bad, why):
    rule = Rule(name="r", model="m", **fields)
    assert passes(rule, _facts(**good)) is None
    assert why in passes(rule, _facts(**bad))


def test_all_and_any():
    fields = {"modalities": ["CT"], "series_description": "lung"}
    ct_abdomen = _facts(modality="CT", description="abdomen")
    assert "series description" in passes(Rule(name="r", model="m", **fields), ct_abdomen)
    assert passes(Rule(name="r", model="m", combine="any", **fields), ct_abdomen) is None
    assert "none of" in passes(Rule(name="r", model="m", combine="any", **fields),
                               _facts(modality="MR", description="abdomen"))


def test_localizers_are_excluded_by_default_whatever_combine_says():
    scout = _facts(image_type="ORIGINAL\\PRIMARY\\LOCALIZER", n_images=0, n_localizers=3)
    for combine in ("all", "any"):
        assert "excluded" in passes(Rule(name="r", model="m", combine=combine, modalities=["CT"]), scout)
    derived = _facts(image_type="DERIVED\\SECONDARY\\AXIAL")
    assert passes(Rule(name="r", model="m"), derived) is None
    assert "excluded" in passes(Rule(name="r", model="m", exclude_image_types=["DERIVED"]), derived)


def test_select_thinnest_fires_on_the_thinnest_axial_series_of_the_study():
    rule = Rule(name="r", model="m", orientations=["AXIAL"], min_instances=20, select="thinnest")
    thick = _facts(series_uid="1.5", slice_thickness=5.0, n_images=60)
    thin = _facts(series_uid="1.1", slice_thickness=1.0, n_images=300)
    coronal = _facts(series_uid="1.0", slice_thickness=0.5, orientation="CORONAL")
    short = _facts(series_uid="1.9", slice_thickness=0.6, n_images=10)
    study = [thick, thin, coronal, short]
    assert decide(rule, thin, study) is None
    assert "thinner series of the study passes the rule: 1.1" in decide(rule, thick, study)
    assert "orientation CORONAL" in decide(rule, coronal, study)


def test_disabled_rules_and_rules_of_models_not_enabled_do_not_route(caplog):
    lung = _model()
    settings = load_settings(None, rules=[
        {"name": "off", "model": "m", "enabled": False, "modalities": ["MR"]},
        {"name": "other", "model": "not-installed"},
    ])
    got = routes(settings, [lung])
    # the disabled rule still counts as the model's own: no default rule is added for it
    assert [r.rule.name for r in got] == []
    assert "not enabled" in caplog.text
    default = routes(load_settings(None), [lung])
    assert [r.rule.name for r in default] == ["m (default)"]


def test_rules_are_ordered_by_priority_and_jobs_claimed_by_priority(index_url, tmp_path):
    settings = load_settings(None, rules=[
        {"name": "low", "model": "m", "priority": 1},
        {"name": "high", "model": "m", "priority": 9},
    ])
    assert [r.rule.name for r in routes(settings, [_model()])] == ["high", "low"]
    sessions = open_index(index_url)
    index_instance(sessions, _meta(1), "x/1.dcm", 10, "S")
    with sessions.begin() as s:
        series_id = s.execute(__import__("sqlalchemy").text("select id from series")).scalar()
        for prio in (0, 5, 1):
            s.add(Job(series_fk=series_id, model_name="m", model_version="1", model_path="/m", priority=prio))
    with sessions() as s:
        order = [s.get(Job, claim_next_job(sessions)).priority for _ in range(3)]
    assert order == [5, 1, 0]


def test_review_comes_from_the_rule_else_the_model(index_url):
    """``review = true`` on a rule, or on the model's ``[[models]]`` entry for rules that do
    not say: the jobs it queues await a clinician's review."""
    reviewed_model = dataclasses.replace(_model(min_slices=1), review=True)
    assert [r.review for r in routes(load_settings(None), [reviewed_model])] == [True]  # default rule
    settings = load_settings(None, rules=[{"name": "says-no", "model": "m", "review": False},
                                          {"name": "silent", "model": "m", "modalities": ["CT"]}])
    assert {r.rule.name: r.review for r in routes(settings, [reviewed_model])} == {"says-no": False, "silent": True}
    sessions = open_index(index_url)
    index_instance(sessions, _meta(1), "x/1.dcm", 10, "S")
    for rule_review, expected in ((True, "awaiting"), (None, "")):
        with sessions.begin() as s:  # the series received again, without its jobs
            s.query(Job).delete()
            s.query(Series).update({"state": "receiving"})
        got = routes(load_settings(None, rules=[{"name": "r", "model": "m", "review": rule_review}]),
                     [_model(min_slices=1)])
        completion = load_settings(None, completion={"stable_seconds": 0.01}).completion
        schedule_complete_series(sessions, got, completion, {CT}, now=dt.datetime(2100, 1, 1))
        with sessions() as s:
            assert [j.review for j in s.query(Job)] == [expected]

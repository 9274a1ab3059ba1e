"""Each completion signal, on index rows written as the receiver writes them."""

import datetime as dt
from dataclasses import replace

from dicom_ai.cache.db import Series, open_index
from dicom_ai.cache.index import index_instance, mark_released
from dicom_ai.schedule.completion import schedule_complete_series

from .test_completion import CT, _completion, _meta, _model, _routes


def _now(seconds=0.0):
    return dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=seconds)


def _send(sessions, numbers, association="A1", spacing=2.5, expected=None, series="1.2.3.4"):
    for i in numbers:
        meta = replace(_meta(i, series=series), association=association, orientation="AXIAL",
                       slice_position=-100 + spacing * i, slice_thickness=spacing,
                       image_type="ORIGINAL\\PRIMARY\\AXIAL", expected_instances=expected)
        index_instance(sessions, meta, f"x/{i}.dcm", 10, "STORESCU")


def _series(sessions):
    with sessions() as s:
        return s.query(Series).one()


def test_expected_count_fires_on_the_last_instance_without_waiting(index_url, tmp_path):
    sessions = open_index(index_url)
    _send(sessions, range(1, 5), expected=5)
    tick = lambda: schedule_complete_series(sessions, _routes(_model()), _completion(30), {CT}, now=_now())
    assert tick() == [] and _series(sessions).state == "receiving"
    _send(sessions, [5], expected=5)
    assert len(tick()) == 1
    assert _series(sessions).completion_signal == "expected_count"


def test_expected_count_can_be_switched_off(index_url, tmp_path):
    sessions = open_index(index_url)
    _send(sessions, range(1, 6), expected=5)
    assert schedule_complete_series(sessions, _routes(_model()), _completion(30, use_expected_count=False),
                                    {CT}, now=_now()) == []


def test_association_release_fires_after_the_grace(index_url, tmp_path):
    sessions = open_index(index_url)
    _send(sessions, range(1, 11))
    mark_released(sessions, "A1", ["1.2.3.4"])
    completion = _completion(30, release_grace_seconds=1.0)
    assert schedule_complete_series(sessions, _routes(_model()), completion, {CT}, now=_now(0.2)) == []
    assert len(schedule_complete_series(sessions, _routes(_model()), completion, {CT}, now=_now(1.1))) == 1
    assert _series(sessions).completion_signal == "association_release"


def _release_refused(index_url, tmp_path, send):
    sessions = open_index(index_url)
    send(sessions)
    mark_released(sessions, "A1", ["1.2.3.4"])
    completion = _completion(30, release_grace_seconds=1.0)
    assert schedule_complete_series(sessions, _routes(_model()), completion, {CT}, now=_now(2)) == []
    series = _series(sessions)
    assert series.state == "receiving" and series.released_association is None  # not retried
    assert len(schedule_complete_series(sessions, _routes(_model()), completion, {CT}, now=_now(31))) == 1
    assert _series(sessions).completion_signal == "stable_seconds"


def test_release_with_a_gap_in_instance_numbers_waits_for_the_idle_timer(index_url, tmp_path):
    _release_refused(index_url, tmp_path, lambda s: _send(s, [1, 2, 3, 5, 6]))


def test_release_with_uneven_spacing_waits_for_the_idle_timer(index_url, tmp_path):
    def send(sessions):
        _send(sessions, range(1, 6))
        _send(sessions, [6], spacing=4.0)
    _release_refused(index_url, tmp_path, send)


def test_series_split_over_two_associations_is_not_complete_at_the_first_release(index_url, tmp_path):
    def send(sessions):
        _send(sessions, range(1, 6), association="A1")
        _send(sessions, range(6, 11), association="A2")
    _release_refused(index_url, tmp_path, send)


def test_an_instance_after_the_release_voids_it(index_url, tmp_path):
    sessions = open_index(index_url)
    _send(sessions, range(1, 6))
    mark_released(sessions, "A1", ["1.2.3.4"])
    _send(sessions, [6])  # same association id, but after the release was recorded
    completion = _completion(30, release_grace_seconds=0.0)
    assert schedule_complete_series(sessions, _routes(_model()), completion, {CT}, now=_now(1)) == []


def test_idle_timer_is_the_fallback(index_url, tmp_path):
    sessions = open_index(index_url)
    _send(sessions, range(1, 6))
    assert schedule_complete_series(sessions, _routes(_model()), _completion(30), {CT}, now=_now(29)) == []
    assert len(schedule_complete_series(sessions, _routes(_model()), _completion(30), {CT}, now=_now(31))) == 1
    assert _series(sessions).completion_signal == "stable_seconds"

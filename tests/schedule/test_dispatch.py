"""Executor "celery": a rule's ``queue`` reaches its jobs, and the node sends each queued job's
id once to that queue on a real Redis broker (the default queue when the rule names none); a
broker that is down leaves the jobs undispatched, to be sent later."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import redisserver
from conftest import require
from kombu.exceptions import OperationalError

from dicom_ai.cache.db import Job, open_index
from dicom_ai.cache.index import index_instance
from dicom_ai.config import load_settings
from dicom_ai.dispatch import TASK, broker_up, celery_app, claim_job, dispatch_queued
from dicom_ai.schedule.completion import schedule_complete_series
from dicom_ai.schedule.routing import routes

from .test_rules import CT, _meta, _model


def _messages(redis, queue: str) -> list[dict]:
    import redis as redis_py

    client = redis_py.Redis(port=redis.port)
    return [json.loads(m) for m in client.lrange(queue, 0, -1)]


def test_jobs_go_once_to_their_rules_queue(index_url):
    require(redisserver.binary(), "redis-server")
    sessions = open_index(index_url)
    index_instance(sessions, _meta(1), "x/1.dcm", 10, "S")
    got = routes(load_settings(None, rules=[{"name": "on-gpu", "model": "m", "queue": "gpu"}]), [_model(min_slices=1)])
    completion = load_settings(None, completion={"stable_seconds": 0.01}).completion
    schedule_complete_series(sessions, got, completion, {CT}, now=dt.datetime(2100, 1, 1))
    with sessions.begin() as s:  # a job whose rule names no queue (a re-run from the web page, say)
        s.add(Job(series_fk=1, model_name="m", model_version="1", model_path="/m", rule="anywhere", priority=-1))
    with sessions() as s:
        queues = {j.rule: (j.id, j.queue) for j in s.query(Job)}
    assert {rule: q for rule, (_, q) in queues.items()} == {"on-gpu": "gpu", "anywhere": ""}

    with redisserver.RedisServer() as redis:
        settings = load_settings(None, celery={"broker_url": redis.url})
        app = celery_app(settings)
        assert broker_up(app)
        assert dispatch_queued(sessions, app, "default") == [queues["on-gpu"][0], queues["anywhere"][0]]
        assert dispatch_queued(sessions, app, "default") == []  # each is sent once
        for queue, rule in (("gpu", "on-gpu"), ("default", "anywhere")):
            (message,) = _messages(redis, queue)
            assert message["headers"]["task"] == TASK
            assert json.loads(base64.b64decode(message["body"]))[0] == [queues[rule][0]]
        # the worker's claim: once only
        assert claim_job(sessions, queues["on-gpu"][0], "w1") is True
        assert claim_job(sessions, queues["on-gpu"][0], "w2") is False
        redis.stop()
        assert not broker_up(app)
        with sessions.begin() as s:
            s.add(Job(series_fk=1, model_name="m", model_version="1", model_path="/m"))
        with pytest.raises(OperationalError):
            dispatch_queued(sessions, app, "default")
        with sessions() as s:
            assert [j.dispatched_at for j in s.query(Job).order_by(Job.id)][-1] is None

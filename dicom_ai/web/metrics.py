"""Prometheus metrics, read from the index at scrape time (so every process's work counts)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from dicom_ai.cache.db import Counter, Delivery, Job, Series
from dicom_ai.cache.states import DeliveryState, JobState
from dicom_ai.cache.workers import workers

#: inference time buckets, s
BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class IndexCollector(Collector):
    """``dicom_ai_*`` metrics: instances received, associations (accepted, refused, open),
    identity conflicts by kind,
    series completed by signal, jobs by state, inference time per model, deliveries by state,
    inference workers by state and their heartbeat age, whether the task broker answers
    (executor "celery"), free disk."""

    def __init__(self, sessions: sessionmaker, data_dir: Path, lost_after_seconds: float = 60.0,
                 broker_up: Callable[[], bool] | None = None) -> None:
        self.broker_up = broker_up
        self.sessions = sessions
        self.data_dir = Path(data_dir)
        self.lost_after_seconds = lost_after_seconds

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as s:
            counters = dict(s.execute(select(Counter.name, Counter.value)).all())
            signals = s.execute(select(Series.completion_signal, func.count(Series.id))
                                .where(Series.completion_signal.is_not(None))
                                .group_by(Series.completion_signal)).all()
            jobs = s.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all()
            deliveries = s.execute(select(Delivery.state, func.count(Delivery.id)).group_by(Delivery.state)).all()
            timings = s.execute(select(Job.model_name, Job.timings).where(Job.state == JobState.DONE)).all()
        yield CounterMetricFamily("dicom_ai_instances_received", "C-STORE instances stored and indexed",
                                  value=counters.get("instances_received", 0))
        assoc = CounterMetricFamily("dicom_ai_associations", "associations by outcome", labels=["outcome"])
        for outcome in ("accepted", "refused"):
            assoc.add_metric([outcome], counters.get(f"associations_{outcome}", 0))
        yield assoc
        conflicts = CounterMetricFamily(
            "dicom_ai_identity_conflicts", "instances refused or kept apart for their patient or "
            "study identity (patient, study) and re-sent SOP Instance UIDs with other content (resent)",
            labels=["kind"])
        for kind in ("patient", "study", "resent"):
            conflicts.add_metric([kind], counters.get(f"identity_conflicts_{kind}", 0))
        yield conflicts
        yield GaugeMetricFamily("dicom_ai_associations_open", "associations accepted and not yet ended",
                                value=max(0, counters.get("associations_accepted", 0)
                                          - counters.get("associations_ended", 0)))
        series = CounterMetricFamily("dicom_ai_series_completed", "series completed, by the signal that fired",
                                     labels=["signal"])
        for signal, n in signals:
            series.add_metric([signal], n)
        yield series
        job_g = GaugeMetricFamily("dicom_ai_jobs", "jobs by state", labels=["state"])
        for state in JobState:
            job_g.add_metric([state], dict(jobs).get(state, 0))
        yield job_g
        per_model: dict[str, list[float]] = {}
        for model, t in timings:
            if t and "inference" in t:
                per_model.setdefault(model, []).append(float(t["inference"]))
        hist = HistogramMetricFamily("dicom_ai_inference_seconds", "sliding-window inference time per job",
                                     labels=["model"])
        for model, values in per_model.items():
            buckets = [(str(float(b)), sum(v <= b for v in values)) for b in BUCKETS] + [("+Inf", len(values))]
            hist.add_metric([model], buckets, sum(values))
        yield hist
        dg = GaugeMetricFamily("dicom_ai_deliveries", "deliveries by state (failed = dead letters)",
                               labels=["state"])
        for delivery_state in DeliveryState:
            dg.add_metric([delivery_state], dict(deliveries).get(delivery_state, 0))
        yield dg
        seen = workers(self.sessions, self.lost_after_seconds)
        wg = GaugeMetricFamily("dicom_ai_workers", "inference workers by state (busy, idle, lost: no "
                               "heartbeat for [worker] lost_after_seconds, stopped)", labels=["state"])
        for worker_state in ("busy", "idle", "lost", "stopped"):
            wg.add_metric([worker_state], sum(w.state == worker_state for w in seen))
        yield wg
        age = GaugeMetricFamily("dicom_ai_worker_heartbeat_age_seconds", "seconds since each worker that "
                                "has not stopped last renewed its heartbeat", labels=["worker", "host"])
        for w in seen:
            if w.state != "stopped":
                age.add_metric([w.name, w.host], round(w.heartbeat_age, 3))
        yield age
        if self.broker_up is not None:
            yield GaugeMetricFamily("dicom_ai_broker_up", "1 when the task broker ([celery] broker_url) "
                                    "answers, else 0", value=1 if self.broker_up() else 0)
        yield GaugeMetricFamily("dicom_ai_free_disk_bytes", "free space in data_dir",
                                value=shutil.disk_usage(self.data_dir).free)

"""The inference worker: a separate process that turns queued jobs into results.

It runs outside the association threads, so torch (and the GIL it holds) never stalls a modality's
transfer.
For each job: the series' instances -> :func:`~dicom_ai.infer.volume.load_series` -> model ->
label mask -> DICOM SEG and SR (:mod:`dicom_ai.report`) written atomically under
``results/<job id>/`` -> result rows and one pending delivery per destination, in one
transaction. A job that cannot run fails with a reason an admin can read; the queue goes on.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import multiprocessing as mp
import os
import resource
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_ai.cache.db import Job, Result, Series, open_index, utcnow
from dicom_ai.cache.states import JobState, ResultKind, ReviewState, SeriesState
from dicom_ai.cache.store import FileStore
from dicom_ai.cache.workers import claim_values, heartbeat, register, still_ours, stopped
from dicom_ai.config import Settings
from dicom_ai.export.outbox import create_deliveries, withdraw_superseded
from dicom_ai.infer.volume import check_one_patient, load_series
from dicom_ai.lifetime import die_with_parent
from dicom_ai.logconf import setup_logging
from dicom_ai.report.findings import Finding, Findings, findings_text
from dicom_ai.report.measure import measure_labels
from dicom_ai.report.plausibility import check_plausibility, reasons_by_label
from dicom_ai.report.preview import label_mask_npz, write_preview_png
from dicom_ai.schedule.routing import enabled_models

log = logging.getLogger(__name__)


def worker_name(settings: Settings, pid: int) -> str:
    """The registry name of the worker process ``pid`` on this host: ``[worker] name``, else
    ``<host>-<pid>``."""
    return settings.worker.name or f"{socket.gethostname()}-{pid}"


class JobTakenAway(RuntimeError):
    """The job was requeued or ended while this worker ran it (its heartbeat lapsed): its
    results must not be committed."""


def claim_next_job(sessions: sessionmaker, worker: str = "") -> int | None:
    """Atomically move the next queued job (highest priority, then oldest) to ``running``,
    claimed by ``worker`` (its registry name); returns its id or None.

    On PostgreSQL the row is locked ``FOR UPDATE SKIP LOCKED``: workers claiming at the same
    moment each get a different job instead of waiting on one another. SQLite has one writer at
    a time; there the conditional UPDATE alone decides (a claim that lost gives None)."""
    with sessions.begin() as session:
        job_id = session.scalar(
            select(Job.id).where(Job.state == JobState.QUEUED).order_by(Job.priority.desc(), Job.id).limit(1)
            .with_for_update(skip_locked=True)
        )
        if job_id is None:
            return None
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(**claim_values(worker))
        ).rowcount
        return job_id if claimed else None


def model_bytes(model: Any) -> int:
    """Bytes of a loaded model's weights, on whichever device they are
    (:attr:`dicom_ai.infer.runtime.LoadedModel.nbytes`)."""
    return int(model.nbytes)


def segmentation_findings(measurements: dict, issues: list) -> dict[str, dict[str, Any]]:
    """A segmentation job's ``findings``: label name -> ``{"volume_ml", "mean_hu"}`` (None when
    the label is empty), plus ``"implausible"``: the list of reasons concerning the label when
    the result is implausible (:func:`dicom_ai.report.plausibility.check_plausibility`;
    read by :func:`dicom_ai.report.findings.findings_reasons`).

    Parameters
    ----------
    measurements: dict[int, dicom_ai.report.measure.LabelMeasurement]
        :func:`dicom_ai.report.measure.measure_labels` of the result.
    issues: list[dicom_ai.report.plausibility.PlausibilityIssue]
        Its plausibility issues (empty when plausible).
    """
    reasons = reasons_by_label(issues)
    findings = Findings({
        m.label.name: Finding(volume_ml=round(m.volume_ml, 1), mean_hu=None if m.is_empty else round(m.mean, 1),
                              implausible=tuple(reasons.get(m.label.value, ())))
        for m in measurements.values()
    })
    return findings.to_json()


class WarmModels:
    """Loaded models kept between jobs within a memory budget of weights per device: ``budget_mb``
    in RAM, ``gpu_budget_mb`` in GPU memory (default: ``budget_mb``). When a new model would not
    fit its device's budget, the least recently used models on that device leave first. The
    model being asked for is always kept, even alone over budget."""

    def __init__(self, budget_mb: float, loader: Callable[[str], Any], gpu_budget_mb: float | None = None) -> None:
        mb = 1024 * 1024
        self.budgets = {"cpu": budget_mb * mb, "cuda": (budget_mb if gpu_budget_mb is None else gpu_budget_mb) * mb}
        self.loader = loader
        self._models: OrderedDict[str, tuple[Any, int, str]] = OrderedDict()

    @property
    def budget(self) -> float:
        """The RAM budget, bytes."""
        return self.budgets["cpu"]

    def get(self, path: str) -> Any:
        """The model of package ``path``, loaded now or kept from an earlier job."""
        if path in self._models:
            self._models.move_to_end(path)
            return self._models[path][0]
        model = self.loader(path)
        size, where = model_bytes(model), model.weights_device
        budget = self.budgets[where]
        while self.used_on(where) + size > budget:
            old = next((p for p, (_, _, w) in self._models.items() if w == where), None)
            if old is None:
                break
            _, old_size, _ = self._models.pop(old)
            log.info("model %s leaves memory (%.1f MB; %s budget %.0f MB)", old, old_size / 2**20,
                     "GPU" if where == "cuda" else "RAM", budget / 2**20)
            if where == "cuda":
                _free_gpu_cache()
        self._models[path] = (model, size, where)
        return model

    def used_on(self, where: str) -> int:
        """Bytes of weights kept on ``"cpu"`` or ``"cuda"``."""
        return sum(size for _, size, w in self._models.values() if w == where)

    @property
    def used(self) -> int:
        """Bytes of weights kept now, all devices."""
        return sum(size for _, size, _ in self._models.values())

    def __contains__(self, path: str) -> bool:
        return path in self._models


def _free_gpu_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class JobRunner:
    """Runs jobs; keeps loaded models in memory between jobs (:class:`WarmModels`).

    ``on_results`` (optional) is called as soon as a job's results and their deliveries are
    committed, before the files only the web page uses (the viewer's mask, the preview) are
    written: the outbox can send the results meanwhile. ``name`` is the worker's registry name:
    a job is committed only while it is still claimed by it (:func:`~dicom_ai.cache.workers.still_ours`)."""

    def __init__(self, settings: Settings, sessions: sessionmaker, store: FileStore,
                 on_results: Callable[[], None] | None = None, name: str = "") -> None:
        self.name = name
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.on_results = on_results
        self._prefetched: tuple[tuple, Any] | None = None  # (series_key, volume), see prefetch
        self._models = WarmModels(settings.worker.model_memory_mb, self._load,
                                  gpu_budget_mb=settings.worker.gpu_model_memory_mb)

    def _load(self, path: str) -> Any:
        from dicom_ai.infer.runtime import load_model  # deferred: start-up time (torch)

        device = None if self.settings.worker.device == "auto" else self.settings.worker.device
        return load_model(Path(path), device=device, reduced_precision=self.settings.worker.reduced_precision)

    def model(self, path: str):
        return self._models.get(path)

    def preload(self) -> None:
        """Load the enabled models now (``[worker] preload_models``), as many as
        ``model_memory_mb`` holds, so the first job of each does not wait for its weights. A
        model that cannot be loaded is logged; its jobs fail with the reason when they run.

        Then encode a tiny SEG and SR once (:func:`dicom_ai.report.sr.warm_up`), so that what
        highdicom and pydicom do only at their first call in a process (0.5-1 s here: parsing
        highdicom's tables of the standard and the full garbage collections that sets off over
        the objects torch and the models keep alive, lazy imports) is not paid by the first
        job's ``report`` time. A failed warm-up is logged; jobs run as without it. With
        ``preload_models`` off the first job pays it."""
        t = time.perf_counter()
        loaded = []
        for routable in enabled_models(self.settings, self.sessions):
            try:
                self.model(str(routable.path))
            except Exception as exc:  # noqa: BLE001 - any loading failure; the job reports it
                log.warning("model %s not preloaded: %s", routable.label, exc)
                continue
            loaded.append(routable.label)
        log.info("models loaded in %.1f s: %s", time.perf_counter() - t, ", ".join(loaded) or "none")
        try:
            from dicom_ai.report.sr import warm_up  # deferred: start-up time (highdicom)

            log.info("result encoding warmed up in %.1f s", warm_up())
        except Exception as exc:  # noqa: BLE001 - without it only the first job is slower
            log.warning("result encoding not warmed up: %s", exc)

    def prefetch(self, within_seconds: float = 60.0) -> bool:
        """Load, while idle, the series most likely to be queued next: the newest one whose
        sending association was released in the last ``within_seconds`` and that is still
        waiting for its completion signal (the release grace, PS3.8 A-RELEASE). Its job, if a
        rule queues one, then uses the volume instead of reading the files again, provided the
        series still holds exactly the same instances (path, size and time of receipt). One
        volume is kept, and only of a modality an enabled model takes; anything that goes wrong
        only means the job reads the files itself. Returns True when a volume was loaded."""
        since = utcnow() - dt.timedelta(seconds=within_seconds)
        with self.sessions() as session:
            series = session.scalars(
                select(Series).where(Series.state == SeriesState.RECEIVING, Series.released_at.is_not(None),
                                     Series.released_at >= since, Series.receiving_association.is_(None),
                                     Series.last_received_at <= Series.released_at)
                .order_by(Series.released_at.desc()).limit(1)).first()
            if series is None:
                return False
            key = _series_key(series)
            paths = [self.store.abspath(i.path) for i in series.instances]
            modality = series.modality
        if self._prefetched is not None and self._prefetched[0] == key:
            return False
        if not any(modality in m.modalities for m in enabled_models(self.settings, self.sessions)):
            return False  # no enabled model takes this modality: no job will follow
        self._prefetched = None  # one volume at a time
        t = time.perf_counter()
        try:
            volume = load_series(paths)
        except Exception as exc:  # noqa: BLE001 - the job, if any, loads it again and says why
            log.debug("series %s not prefetched: %s", key[0], exc)
            return False
        self._prefetched = (key, volume)
        log.info("series %s (%d files) read ahead of its job in %.2f s", key[0], len(paths), time.perf_counter() - t)
        return True

    def _volume(self, key: tuple, paths: list[Path]) -> tuple[Any, bool]:
        """The volume of the series whose :func:`_series_key` is ``key`` (read ahead by
        :meth:`prefetch` if its instances are those it read, else read from ``paths`` now), and
        whether it was read ahead."""
        ahead, self._prefetched = self._prefetched, None
        if ahead is not None and ahead[0] == key:
            return ahead[1], True
        del ahead  # its memory goes before this series is read
        return load_series(paths), False

    def run(self, job_id: int) -> None:
        """Run one claimed job to ``done`` or ``failed``; never raises. A job taken away from
        this worker meanwhile (requeued, see :mod:`dicom_ai.cache.workers`) is left as it is."""
        t0 = time.perf_counter()
        try:
            self._run(job_id, t0)
        except JobTakenAway as exc:
            log.warning("job %d: %s; its results are not kept", job_id, exc)
        except Exception as exc:  # noqa: BLE001 - a bad series must not stop the queue
            reason = f"{type(exc).__name__}: {exc}"
            log.error("job %d failed: %s", job_id, reason)
            with self.sessions.begin() as session:
                job = self._hold(session, job_id)
                if job is None:
                    log.warning("job %d was taken away from this worker meanwhile; left as it is", job_id)
                    return
                job.state = JobState.FAILED
                job.reason = reason[:2000]
                job.finished_at = utcnow()

    def _hold(self, session: Session, job_id: int) -> Job | None:
        """The job, write-locked in ``session``'s transaction, if it is still running under this
        worker (:func:`~dicom_ai.cache.workers.still_ours`); else None. Its first statement is
        an UPDATE, so the lock is taken before the check: a concurrent requeue waits for the
        commit, or went first and is seen."""
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow()))
        job = session.get(Job, job_id, populate_existing=True)
        return job if job is not None and still_ours(job, self.name) else None

    def _run(self, job_id: int, t0: float) -> None:
        timings: dict[str, float] = {}
        with self.sessions() as session:
            job = session.get(Job, job_id)
            series = session.get(Series, job.series_fk)
            model_path = job.model_path
            destinations = job.destinations
            key = _series_key(series)
            paths = [self.store.abspath(i.path) for i in series.instances]
        log.info("job %d: %s on series %s (%d files)", job_id, Path(model_path).name, key[0], len(paths))
        t = time.perf_counter()
        volume, ahead = self._volume(key, paths)
        check_one_patient(volume.datasets)  # one patient, whatever the index says (PS3.3 C.7.1.1)
        timings["load"] = time.perf_counter() - t
        if ahead:
            timings["read_ahead"] = 1
        t = time.perf_counter()
        model = self.model(model_path)  # kept loaded: only the first job of a model pays this
        timings["model_load"] = time.perf_counter() - t
        manifest = model.manifest
        viewer_files: Callable[[], None] | None = None
        if manifest.task == "classification":
            outputs, findings = self._classify(job_id, model, volume, timings)
        else:
            outputs, findings, viewer_files = self._segment(job_id, model, volume, timings, destinations)
        timings["total"] = time.perf_counter() - t0
        timings["worker_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with self.sessions.begin() as session:
            held = self._hold(session, job_id)
            if held is None:
                raise JobTakenAway("it was requeued or ended meanwhile (its heartbeat lapsed)")
            job = held
            for kind, obj, rel in outputs:
                result = Result(
                    job=job,
                    kind=kind,
                    sop_class_uid=str(obj.SOPClassUID),
                    sop_instance_uid=str(obj.SOPInstanceUID),
                    series_instance_uid=str(obj.SeriesInstanceUID),
                    path=rel,
                )
                session.add(result)
                create_deliveries(session, result, self.settings, job.destinations)
            if job.review != ReviewState.AWAITING:  # else when a clinician approves the new results
                withdraw_superseded(session, job, self.store, self.settings, manifest)
            job.state = JobState.DONE
            job.finished_at = utcnow()
            job.timings = {k: round(v, 3) for k, v in timings.items()}
            job.findings = findings
        log.info("job %d done in %.1f s: %s", job_id, timings["total"], findings_text(findings))
        if self.on_results is not None:
            self.on_results()
        if viewer_files is not None:
            t = time.perf_counter()
            viewer_files()
            try:  # the job is done and its results queued whatever happens here
                with self.sessions.begin() as session:
                    job = session.get(Job, job_id)
                    job.timings = {**job.timings, "preview": round(time.perf_counter() - t, 3)}
            except Exception as exc:  # noqa: BLE001 - a database error on a convenience figure
                log.warning("job %d: preview time not recorded: %s", job_id, exc)

    def _write(self, job_id: int, kind: str, obj, number: int | None = None) -> tuple[str, Any, str]:
        buf = io.BytesIO()
        obj.save_as(buf, enforce_file_format=True)
        rel = self.store.result_relpath(job_id, kind, number)
        self.store.write(rel, buf.getbuffer())
        return kind, obj, rel

    def _wants(self, names: list[str] | None, kind: str) -> bool:
        """Whether one of the destinations ``names`` (None: all) takes results of ``kind``
        (``[[destinations]] results``)."""
        return any(kind in d.results for d in self.settings.destinations if names is None or d.name in names)

    def _classify(self, job_id: int, model, volume, timings: dict[str, float]):
        """Classification: one SR with the class and its probability (TID 1500 / TID 1501)."""
        from dicom_ai.report.sr import build_classification_sr  # deferred: start-up time (highdicom)

        result, model_timings = model.predict(volume)
        timings.update(model_timings)
        t = time.perf_counter()
        sr = build_classification_sr(volume, result, model.manifest,
                                     device_serial_number=self.settings.node.ae_title, precision=model.precision)
        outputs = [self._write(job_id, ResultKind.SR, sr)]
        timings["report"] = time.perf_counter() - t
        return outputs, {model.manifest.finding.meaning: result.as_findings()}

    def _segment(self, job_id: int, model, volume, timings: dict[str, float], destinations: list[str] | None):
        """Segmentation: SEG and SR (volumes, mean HU, plausibility); returns them with the
        findings and a function that writes the mask for the viewer and a preview (run after the
        results are committed). An implausible result (:mod:`dicom_ai.report.plausibility`) is logged in one
        line and its reasons go into the findings (``"implausible"`` of each label concerned)."""
        from dicom_ai.report.seg import build_seg  # deferred: start-up time (highdicom)
        from dicom_ai.report.sr import build_sr  # deferred: start-up time (highdicom)

        manifest = model.manifest
        mask, model_timings = model.predict(volume)
        timings.update(model_timings)
        t = time.perf_counter()
        omit = all(d.omit_empty_frames for d in self.settings.destinations) if self.settings.destinations else True
        measurements = measure_labels(volume, mask, manifest)
        issues = check_plausibility(measurements, manifest)
        if issues:  # label names and numbers only: no patient data in the log
            log.warning("job %d: implausible result of %s: %s", job_id, manifest.label,
                        "; ".join(i.reason for i in issues))
        seg = build_seg(volume, mask, manifest, omit_empty_frames=omit,
                        device_serial_number=self.settings.node.ae_title, precision=model.precision)
        sr = build_sr(volume, mask, seg, manifest, device_serial_number=self.settings.node.ae_title,
                      measurements=measurements, plausibility=issues, precision=model.precision)
        outputs = [self._write(job_id, kind, obj) for kind, obj in ((ResultKind.SEG, seg), (ResultKind.SR, sr))]
        findings = segmentation_findings(measurements, issues)
        timings["report"] = time.perf_counter() - t
        if self._wants(destinations, "sc"):
            from dicom_ai.report.sc import build_secondary_capture  # deferred: only some sites want it

            t = time.perf_counter()
            pages = build_secondary_capture(volume, mask, manifest, measurements,
                                            device_serial_number=self.settings.node.ae_title,
                                            precision=model.precision)
            outputs += [self._write(job_id, ResultKind.SC, page, n) for n, page in enumerate(pages, start=1)]
            timings["secondary_capture"] = time.perf_counter() - t

        def viewer_files() -> None:
            """For the web page only, after the results are committed (a failure is logged:
            the job is done): the label mask (slices, rows, columns) with each slice's file,
            and the preview montage."""
            try:
                slices = [str(Path(p).relative_to(self.store.root)) for p in volume.paths]
                labels = np.array([[lb.value, *lb.color] for lb in manifest.labels])
                self.store.write(f"results/{job_id}/mask.npz", label_mask_npz(mask, slices, labels))
                write_preview_png(volume, mask, manifest, self.store.abspath(f"results/{job_id}/preview.png"))
            except Exception as exc:  # noqa: BLE001 - the viewer and the preview are conveniences
                log.warning("job %d: viewer files not written: %s", job_id, exc)

        return outputs, findings, viewer_files


def _series_key(series: Series) -> tuple:
    """What identifies the files of a series: its id and each instance's path, size and time of
    receipt (a replaced instance changes the last two)."""
    return (series.series_instance_uid, series.id,
            tuple(sorted((i.path, i.size, i.received_at) for i in series.instances)))


def worker_main(settings_json: str, stop: Any, parent_pid: int | None = None, wake: Any = None,
                finished: Any = None) -> None:
    """Entry point of the worker process: poll for queued jobs until ``stop`` is set, or the
    node process ``parent_pid`` is gone: the kernel kills the worker when the node dies, however
    it dies (:func:`~dicom_ai.lifetime.die_with_parent`; a job it was running is requeued
    at the next start), and between jobs it checks ``os.getppid()`` too. ``finished`` is set
    after each job, so the node sends its results at once."""
    parent = parent_pid if parent_pid is not None else os.getppid()
    die_with_parent(parent)  # first: the node may die while this process is starting
    settings = Settings.model_validate_json(settings_json)
    setup_logging()
    from dicom_ai.infer.runtimes import configure_threads  # deferred: imports torch, after die_with_parent

    threads = configure_threads()  # once per process: torch and onnxruntime use every core
    sessions = open_index(settings.database_url)
    name = worker_name(settings, os.getpid())
    runner = JobRunner(settings, sessions, FileStore(settings.node.data_dir),
                       on_results=finished.set if finished is not None else None, name=name)
    with registered(settings, sessions, name) as beat:
        log.info("worker started: %s (%d CPU threads for inference)", name, threads)
        if settings.worker.preload_models:
            runner.preload()
        while not stop.is_set():
            if os.getppid() != parent:  # the node was killed: its successor starts its own worker
                log.warning("node process gone; worker exits")
                break
            job_id = claim_next_job(sessions, name)
            if job_id is None:
                if settings.worker.read_ahead:
                    try:
                        if runner.prefetch():
                            continue  # its job may be queued meanwhile
                    except Exception:  # noqa: BLE001 - reading ahead is an optimisation only
                        log.exception("read-ahead failed")
                # the node sets ``wake`` when it queues jobs, when a series' sending association
                # is released (its job may follow) and when it stops: no poll delay then
                (wake or stop).wait(settings.worker.poll_seconds)
                if wake is not None:
                    wake.clear()
                continue
            beat.run(runner, job_id)
            if finished is not None:
                finished.set()


@contextmanager
def registered(settings: Settings, sessions: sessionmaker, name: str) -> Iterator[Heartbeat]:
    """Register worker ``name`` (:func:`dicom_ai.cache.workers.register`) and keep its heartbeat
    going (:class:`Heartbeat`) for the ``with`` block; on leaving, record that it stopped."""
    register(sessions, name, socket.gethostname(), os.getpid(), _device(settings), settings.worker.queues)
    beat = Heartbeat(sessions, name, settings.worker.heartbeat_seconds)
    beat.start()
    try:
        yield beat
    finally:
        beat.stop()
        try:
            stopped(sessions, name)
        except Exception as exc:  # noqa: BLE001 - the registry then shows it lost, not stopped
            log.warning("worker %s: stop not recorded: %s", name, exc)
        log.info("worker stopped")


def serve_celery(settings: Settings) -> None:
    """``dicom-ai worker``: run jobs that the node hands out through Celery (``[node] executor =
    "celery"``), from the queues ``[worker] queues``, one at a time, until SIGTERM or SIGINT
    (the job running then is finished first; a second signal stops at once and the node
    requeues the job when its heartbeat lapses).

    The worker needs the same index (``node.database_url``) and the same instance store
    (``node.data_dir``, a shared path) as the node, and the model packages at the paths the
    node's registry names (``data_dir/models`` is in the store). Settings: :mod:`dicom_ai.dispatch`."""
    from dicom_ai.dispatch import TASK, celery_app, claim_job  # deferred: Celery, only in this mode
    from dicom_ai.infer.runtimes import configure_threads  # deferred: imports torch

    threads = configure_threads()
    sessions = open_index(settings.database_url)
    name = worker_name(settings, os.getpid())
    runner = JobRunner(settings, sessions, FileStore(settings.node.data_dir), name=name)
    with registered(settings, sessions, name) as beat:
        log.info("worker started: %s, queues %s (%d CPU threads for inference)", name,
                 ", ".join(settings.worker.queues), threads)
        if settings.worker.preload_models:
            runner.preload()
        app = celery_app(settings)

        @app.task(name=TASK)
        def run_job(job_id: int) -> None:
            if not claim_job(sessions, job_id, name):
                log.info("job %d is not queued any more (run already, or sent twice); nothing to do", job_id)
                return
            beat.run(runner, job_id)

        app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--loglevel=INFO",
                         "--queues", ",".join(settings.worker.queues), "--hostname", f"{name}@%h",
                         "--without-gossip", "--without-mingle"])


def _device(settings: Settings) -> str:
    """``cpu`` or ``cuda``: where this worker runs models (``[worker] device``, ``auto`` resolved)."""
    if settings.worker.device != "auto":
        return settings.worker.device
    import torch  # deferred: imports torch, only in the worker process

    return "cuda" if torch.cuda.is_available() else "cpu"


class Heartbeat:
    """A thread that renews a worker's heartbeat, and that of ``job_id`` (the job it runs, set by
    the worker loop), every ``seconds`` (:func:`dicom_ai.cache.workers.heartbeat`). A failed
    renewal (the database away) is logged once and tried again at the next beat."""

    def __init__(self, sessions: sessionmaker, name: str, seconds: float) -> None:
        self.sessions, self.name, self.seconds = sessions, name, seconds
        self.job_id: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, runner: JobRunner, job_id: int) -> None:
        """Run a claimed job with ``runner``, its heartbeat renewed while it runs."""
        self.job_id = job_id
        try:
            runner.run(job_id)
        finally:
            self.job_id = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.seconds + 5)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.seconds):
            try:
                heartbeat(self.sessions, self.name, self.job_id)
                if failing:
                    log.info("worker %s: heartbeat renewed again", self.name)
                failing = False
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                if not failing:
                    log.warning("worker %s: heartbeat not renewed: %s", self.name, exc)
                failing = True


def start_worker(settings: Settings, finished: Any = None) -> tuple[BaseProcess, Any, Any]:
    """Start the worker process (spawned: a clean interpreter, torch imported only there).

    Returns the process and two events: ``stop`` ends it after its current job; ``wake`` makes
    an idle worker look for queued jobs at once instead of after ``[worker] poll_seconds`` (set
    it when jobs are queued, and with ``stop``). The worker sets ``finished`` (an event of the
    ``spawn`` context, when given) each time it has ended a job.
    """
    ctx = mp.get_context("spawn")
    stop, wake = ctx.Event(), ctx.Event()
    proc = ctx.Process(
        target=worker_main, args=(settings.model_dump_json(),),
        kwargs={"stop": stop, "parent_pid": os.getpid(), "wake": wake, "finished": finished},
        name="dicom-ai-worker", daemon=False,
    )
    proc.start()
    return proc, stop, wake

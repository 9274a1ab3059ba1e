"""The node: receiver, scheduler, worker process and outbox in one foreground service.

``dicom-ai serve`` builds a :class:`Node` and calls :meth:`Node.serve_forever`; SIGINT or SIGTERM
stop it cleanly: no new associations, open ones ended, scheduler ticks finished, the worker
process asked to stop (a job it cannot finish in time is requeued at the next start). Every
file is written atomically, so nothing is ever half-written.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_ai.cache.db import open_index, receiver_index
from dicom_ai.cache.index import index_orphans
from dicom_ai.cache.retention import apply_retention
from dicom_ai.cache.store import FileStore
from dicom_ai.cache.workers import requeue_jobs_of, requeue_jobs_of_ended_workers, requeue_lost_jobs
from dicom_ai.config import Settings
from dicom_ai.export.outbox import deliver_due, recover_deliveries
from dicom_ai.models.registry import generation, seed_shipped
from dicom_ai.receive.process import start_receiver
from dicom_ai.receive.scp import StorageSCP, image_storage_sop_classes
from dicom_ai.receive.transport import AssociationSlots, open_listener
from dicom_ai.schedule.completion import schedule_complete_series
from dicom_ai.schedule.routing import enabled_models, routes
from dicom_ai.worker import start_worker, worker_name

if TYPE_CHECKING:
    import socket
    from multiprocessing.process import BaseProcess

    import uvicorn

log = logging.getLogger(__name__)

RECEIVER_GRACE = 10.0  # s receiver processes get to stop before they are killed
#: s after the release grace at which the completion tick runs again (the release was recorded
#: a little before the node heard of it, so the grace has passed by then)
RELEASE_TICK_MARGIN = 0.02


class Node:
    """One running dicom-ai node."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = FileStore(settings.node.data_dir)
        self.sessions = open_index(settings.database_url)
        seed_shipped(self.sessions, settings)
        self._registry_generation = generation(self.sessions)
        self.models = enabled_models(settings, self.sessions)
        self.routes = routes(settings, self.models)
        # set by this process's receiver and the receiver processes after an A-RELEASE that ended
        # a series' transfer: the completion tick then runs at once and when the grace is over
        self._released = mp.get_context("spawn").Event()
        self.scp = StorageSCP(settings, self.store, receiver_index(settings.database_url),
                              on_release=self._released.set)
        self._tick_lock = threading.Lock()  # the interval tick and the release wake-up, one at a time
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._image_classes = set(image_storage_sop_classes())
        self._stopped = threading.Event()
        self.worker: BaseProcess | None = None
        self._worker_stop: Any = None
        self._worker_wake: Any = None
        # set by the worker after each job: the outbox then runs at once, not at its next tick
        self._job_finished = mp.get_context("spawn").Event()
        self._outbox_lock = threading.Lock()  # the tick and the wake-up never run it together
        self._released_seen: set[int] = set()  # series in their release grace at the last tick
        self.listener: socket.socket | None = None
        self.web: uvicorn.Server | None = None
        self.receivers: dict[int, tuple] = {}  # number -> (process, stop event)
        self.slots: AssociationSlots | None = None  # the node's association counts, all processes
        # executor "celery": jobs go to workers through the broker (dicom_ai.dispatch)
        self.celery: Any = None
        self.broker_reachable = True
        if settings.node.executor == "celery":
            from dicom_ai.dispatch import celery_app  # deferred: Celery, only in this mode

            self.celery = celery_app(settings)

    def _refresh_models(self) -> None:
        """Take up registry changes (``dicom-ai models add/enable/disable/remove``) without a restart."""
        now = generation(self.sessions)
        if now != self._registry_generation:
            self._registry_generation = now
            self.models = enabled_models(self.settings, self.sessions)
            self.routes = routes(self.settings, self.models)
            log.info("models now: %s", ", ".join(m.label for m in self.models) or "none")

    def _completion_tick(self) -> None:
        with self._tick_lock:
            self._completion_tick_locked()

    def _complete_released(self) -> None:
        """Run the completion tick as soon as a receiver has recorded an A-RELEASE (the idle
        worker then reads the series ahead at once), and again when ``[completion]
        release_grace_seconds`` have passed (the series is then complete), instead of up to
        ``check_interval_seconds`` later; until the node stops."""
        grace = self.settings.completion.release_grace_seconds + RELEASE_TICK_MARGIN
        while not self._stopped.is_set():
            if not self._released.wait(1.0) or self._stopped.is_set():
                continue
            self._released.clear()
            self._completion_tick()
            if not self.settings.completion.use_association_release or self._stopped.wait(grace):
                continue
            self._completion_tick()

    def _completion_tick_locked(self) -> None:
        try:
            self._refresh_models()
            released: list[int] = []
            queued = schedule_complete_series(
                self.sessions, self.routes, self.settings.completion, self._image_classes, released=released
            )
            lost = requeue_lost_jobs(self.sessions, self.settings.worker.lost_after_seconds)
            if lost:
                log.warning("jobs %s requeued: their worker sent no heartbeat for %.0f s",
                            ", ".join(map(str, lost)), self.settings.worker.lost_after_seconds)
            if self.celery is not None:
                self._dispatch()
            # newly released series: the idle worker reads them ahead of their jobs
            ahead = set(released) - self._released_seen
            self._released_seen = set(released)
            if (queued or lost or ahead) and self._worker_wake is not None:
                self._worker_wake.set()
        except Exception:
            log.exception("completion tick failed")

    def _dispatch(self) -> None:
        """Executor "celery": send the queued jobs not yet sent; a broker that cannot be reached
        is logged once, when it goes, and once when it is back."""
        from dicom_ai.dispatch import dispatch_queued  # deferred: Celery, only in this mode

        try:
            sent = dispatch_queued(self.sessions, self.celery, self.settings.celery.default_queue)
        except Exception as exc:  # noqa: BLE001 - the jobs wait in the index for the broker
            if self.broker_reachable:
                log.error("broker %s not reachable; jobs wait in the index: %s",
                          self.settings.celery.broker_url, exc)
            self.broker_reachable = False
            return
        if not self.broker_reachable:
            log.info("broker reachable again")
        self.broker_reachable = True
        if sent:
            log.info("jobs %s sent to the workers", ", ".join(map(str, sent)))

    def _outbox_tick(self) -> None:
        with self._outbox_lock:
            try:
                # transfers an ended node process left (this node's before a restart, or another's)
                recover_deliveries(self.sessions, self.settings)
                deliver_due(self.sessions, self.store, self.settings)
            except Exception:
                log.exception("outbox tick failed")

    def _deliver_finished_jobs(self) -> None:
        """Run the outbox as soon as the worker has ended a job (its results are then queued),
        rather than up to ``[completion] check_interval_seconds`` later; until the node stops."""
        while not self._stopped.is_set():
            if self._job_finished.wait(1.0) and not self._stopped.is_set():
                self._job_finished.clear()
                self._outbox_tick()

    def _retention_tick(self) -> None:
        r = self.settings.retention
        try:
            apply_retention(self.sessions, self.store, max_age_days=r.max_age_days,
                            max_disk_percent=r.max_disk_percent)
        except Exception:
            log.exception("retention tick failed")

    def start(self) -> None:
        """Recover state left by a previous run, then start every part."""
        removed = self.store.remove_stale_temporaries()
        # instance files renamed into place but never indexed (killed before the commit)
        orphans_indexed, orphans_removed = index_orphans(self.sessions, self.store)
        # the node's own worker stopped with the node; workers elsewhere (or of another node
        # sharing the index) may still be running theirs: a lost one is found by its heartbeat
        requeued = len(requeue_jobs_of_ended_workers(self.sessions))
        if removed or orphans_indexed or orphans_removed or requeued:
            log.info("recovered: %d temporary files removed, %d unindexed instance files indexed "
                     "and %d removed, %d jobs requeued", removed, orphans_indexed, orphans_removed,
                     requeued)
        if self.celery is None:
            self.worker, self._worker_stop, self._worker_wake = start_worker(self.settings, self._job_finished)
        interval = self.settings.completion.check_interval_seconds
        self.scheduler.add_job(self._completion_tick, "interval", seconds=interval, max_instances=1,
                               coalesce=True, id="completion")
        self.scheduler.add_job(self._outbox_tick, "interval", seconds=interval, max_instances=1,
                               coalesce=True, id="outbox")
        self.scheduler.add_job(self._retention_tick, "interval",
                               minutes=self.settings.retention.check_interval_minutes,
                               max_instances=1, coalesce=True, id="retention")
        self.scheduler.start()
        threading.Thread(target=self._deliver_finished_jobs, name="outbox-wake", daemon=True).start()
        threading.Thread(target=self._complete_released, name="release-wake", daemon=True).start()
        node = self.settings.node
        self.listener = open_listener(node.bind_address, node.port)
        # [node] max_associations(_per_address) hold for the node: one row of counts per process
        self.slots = AssociationSlots(node.max_associations, node.max_associations_per_address,
                                      processes=node.receiver_count())
        self.scp.start(self.listener, slots=self.slots.for_process(0))
        for number in range(1, node.receiver_count()):
            self.receivers[number] = start_receiver(self.settings, self.listener, number, self.slots,
                                                    self._released)
        if self.settings.web.enabled:
            self._start_web()
        log.info(
            "node %s ready: %d receiver processes, data in %s, models: %s, destinations: %s",
            self.settings.node.ae_title,
            1 + len(self.receivers),
            self.settings.node.data_dir,
            ", ".join(m.label for m in self.models) or "none",
            ", ".join(d.name for d in self.settings.destinations) or "none",
        )

    def _start_web(self) -> None:
        import uvicorn

        from dicom_ai.web.app import create_app  # deferred: start-up time (fastapi), only with the web server on

        web = self.settings.web
        config = uvicorn.Config(create_app(self.settings, self.sessions), host=web.bind_address,
                                port=web.port, log_level="warning", access_log=False)  # no PHI in logs
        self.web = uvicorn.Server(config)
        self.web.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # the node handles SIGINT/SIGTERM (older uvicorn)
        threading.Thread(target=self.web.run, name="web", daemon=True).start()
        log.info("web pages on http://%s:%d/", web.bind_address, web.port)

    def stop(self, worker_grace: float = 30.0) -> None:
        """Stop every part; idempotent. The receivers (this process's SCP and the receiver
        processes, all at once) take at most ~8 s whatever their peers do
        (:meth:`StorageSCP.stop`); a receiver process still there after ``RECEIVER_GRACE`` s is
        killed."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping")
        if self.web is not None:
            self.web.should_exit = True
        for _proc, stop in self.receivers.values():
            stop.set()  # they stop while this process's SCP does
        self.scp.stop()
        deadline = time.monotonic() + RECEIVER_GRACE
        for proc, _stop in self.receivers.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("receiver %s did not stop in %.0f s; killing it", proc.name, RECEIVER_GRACE)
                proc.kill()
                proc.join(2)
        if self.listener is not None:
            self.listener.close()
        self.scheduler.shutdown(wait=True)
        if self.worker is not None:
            self._worker_stop.set()
            self._worker_wake.set()
            self.worker.join(worker_grace)
            if self.worker.is_alive():
                log.warning("worker did not stop in %.0f s; terminating (its job is requeued at next start)", worker_grace)
                self.worker.terminate()
                self.worker.join(5)
        log.info("stopped")

    def serve_forever(self) -> None:
        """Start, then block until SIGINT/SIGTERM, then stop."""
        done = threading.Event()

        def _on_signal(signum, _frame):
            log.info("signal %s received", signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        self.start()
        try:
            while not done.wait(1.0):
                if self.worker is not None and not self.worker.is_alive():
                    log.error("worker process died (exit code %s); restarting it", self.worker.exitcode)
                    assert self.worker.pid is not None  # it was started
                    requeued = requeue_jobs_of(self.sessions, worker_name(self.settings, self.worker.pid),
                                               f"died (exit code {self.worker.exitcode})")
                    if requeued:
                        log.warning("jobs %s requeued: their worker died", ", ".join(map(str, requeued)))
                    self.worker, self._worker_stop, self._worker_wake = start_worker(
                        self.settings, self._job_finished)
                for number, (proc, _stop) in list(self.receivers.items()):
                    if not proc.is_alive():
                        log.error("receiver %d died (exit code %s); restarting it", number, proc.exitcode)
                        assert self.listener is not None  # start() opened it
                        self.receivers[number] = start_receiver(self.settings, self.listener, number,
                                                                self.slots, self._released)
        finally:
            self.stop()

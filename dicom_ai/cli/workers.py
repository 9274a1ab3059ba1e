"""``dicom-ai workers``: the inference workers the index knows, with their state."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from dicom_ai.cli.common import ConfigOpt, console, index_of

app = typer.Typer(help="Inference workers: host, queues, current job, last heartbeat.", no_args_is_help=True)


@app.command("list")
def workers_list(config: ConfigOpt = None) -> None:
    """Every worker the index knows, live ones first: name, host and process id, device, queues,
    state (busy with a job, idle, lost: no heartbeat for [worker] lost_after_seconds, or
    stopped), the job it runs, when it started and its last heartbeat (UTC, and how long ago)."""
    from dicom_ai.cache.workers import workers  # deferred: start-up time

    settings, sessions = index_of(config)
    rows = workers(sessions, settings.worker.lost_after_seconds)
    if not rows:
        console.print("no workers registered")
        return
    styles = {"busy": "green", "idle": "green", "lost": "red", "stopped": "dim"}
    table = Table("worker", "host", "pid", "device", "queues", "state", "job", "started", "last heartbeat")
    for w in rows:
        table.add_row(escape(w.name), escape(w.host), str(w.pid), w.device, escape(", ".join(w.queues) or "-"),
                      f"[{styles[w.state]}]{w.state}[/]", str(w.job_id) if w.job_id is not None else "-",
                      w.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                      f"{w.heartbeat_at:%Y-%m-%d %H:%M:%S} ({w.heartbeat_age:.0f} s ago)")
    console.print(table)

"""``dicom-ai jobs``: the inference jobs in the index, and the series no model was run on.

``show`` of an unknown job id ends with exit status 1.
"""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from dicom_ai.cli.common import ConfigOpt, console, err, index_of
from dicom_ai.report.findings import Findings, findings_text

app = typer.Typer(help="Inference jobs.", no_args_is_help=True)


@app.command("list")
def jobs_list(config: ConfigOpt = None, limit: int = 50) -> None:
    """List the most recent jobs, and the recent series that no model was run on, with why."""
    from dicom_ai.cache import queries  # deferred: start-up time
    from dicom_ai.cache.db import Job  # deferred: start-up time

    _, sessions = index_of(config)
    table = Table("id", "state", "model", "rule", "series", "complete by", "created (UTC)", "s",
                  "findings / reason")
    with sessions() as s:
        for job in queries.newest(s, Job, limit):
            detail = job.reason or findings_text(job.findings)
            table.add_row(str(job.id), job.state, f"{job.model_name} {job.model_version}", job.rule,
                          "…" + job.series.series_instance_uid[-12:], job.series.completion_signal or "",
                          f"{job.created_at:%Y-%m-%d %H:%M:%S}", str((job.timings or {}).get("total", "")),
                          detail)
        console.print(table)
        idle = queries.idle_series(s, limit)
        if idle:
            table = Table("series sent to no model", "complete by", "why (per rule)")
            for series in idle:
                table.add_row(series.series_instance_uid, series.completion_signal or "",
                              escape(series.routing_note.replace("; ", "\n")))
            console.print(table)


@app.command("show")
def jobs_show(job_id: int, config: ConfigOpt = None) -> None:
    """Everything about one job: series, completion, routing, timings, findings, results and
    deliveries."""
    from dicom_ai.cache.db import Job  # deferred: start-up time

    _, sessions = index_of(config)
    with sessions() as s:
        job = s.get(Job, job_id)
        if job is None:
            err.print(f"no job {job_id}")
            raise typer.Exit(1)
        series = job.series
        console.print(f"[bold]job {job.id}[/bold]: {job.state}" + (f" — {job.reason}" if job.reason else ""))
        console.print(f"model: {job.model_name} {job.model_version} ({job.model_path})")
        console.print(f"rule: {job.rule or '-'}, priority {job.priority}")
        console.print(f"series: {series.series_instance_uid} ({series.modality}, {len(series.instances)} instances, "
                      f"'{series.description}') from {series.calling_ae_title}")
        console.print(f"completed: {series.completed_at} by {series.completion_signal}")
        console.print("routing:")
        for note in series.routing_note.split("; "):
            console.print(f"  {escape(note)}", soft_wrap=True)
        console.print(f"created {job.created_at}, started {job.started_at}, finished {job.finished_at}, attempts {job.attempts}")
        console.print(f"worker: {escape(job.worker or '-')}" + (f", last heartbeat {job.heartbeat_at}" if job.heartbeat_at else ""))
        if job.timings:
            console.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in job.timings.items()))
        for name, f in Findings.from_json(job.findings):
            if f.is_classification:
                console.print(f"finding: {name}: {f.klass}, probability {f.probability}"
                              + (" — needs attention" if f.attention else "")
                              + f" ({', '.join(f'{k} {v}' for k, v in f.probabilities.items())})")
            else:
                console.print(f"finding: {name}: {f.volume_ml} mL, mean {f.mean_hu} HU"
                              + (f" — needs attention: {'; '.join(f.implausible)}" if f.implausible else ""))
        for r in job.results:
            console.print(f"result {r.kind}: {r.sop_instance_uid} ({r.path})")
            for d in r.deliveries:
                console.print(f"  -> {d.destination}: {d.state}, attempts {d.attempts}, {d.last_status}")

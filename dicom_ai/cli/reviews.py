"""``dicom-ai reviews``: the audit trail of clinicians' decisions on jobs' results, and the
rejected jobs as correction candidates for training.

``list --decision`` other than ``approve`` or ``reject`` ends with exit status 2; an empty list
is a one-line note and exit status 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from dicom_ai.cache.states import ReviewState
from dicom_ai.cli.common import ConfigOpt, LimitOpt, console, err, index_of

if TYPE_CHECKING:
    from dicom_ai.cache.db import Job, Series, Study

#: The values of :class:`~dicom_ai.cache.db.Review` ``decision``.
DECISIONS = ("approve", "reject")

DecisionOpt = Annotated[Optional[str], typer.Option(help="Only this decision: approve or reject.")]
app = typer.Typer(help="Clinicians' reviews of jobs' results: the audit trail, and what to correct.",
                  no_args_is_help=True)


def _date(da: str) -> str:
    """A DA value ``YYYYMMDD`` as ``YYYY-MM-DD``; anything else as it is."""
    return f"{da[:4]}-{da[4:6]}-{da[6:]}" if len(da) == 8 and da.isdigit() else da


def _study(study: Study) -> str:
    """Accession Number and Study Date of a study, for a table cell."""
    return escape(", ".join(x for x in (study.accession_number, _date(study.study_date)) if x) or "-")


@app.command("list")
def reviews_list(decision: DecisionOpt = None, limit: LimitOpt = 100, config: ConfigOpt = None) -> None:
    """List the reviews, newest first: when, who (role), the decision, the job and its model,
    the study (Accession Number, Study Date), the series and the comment."""
    from sqlalchemy import select  # deferred: start-up time

    from dicom_ai.cache.db import Review  # deferred: start-up time

    if decision is not None and decision not in DECISIONS:
        err.print(f"--decision must be one of {', '.join(DECISIONS)}, not {escape(decision)!r}")
        raise typer.Exit(2)
    _, sessions = index_of(config)
    stmt = select(Review).order_by(Review.at.desc(), Review.id.desc()).limit(limit)
    if decision:
        stmt = stmt.where(Review.decision == decision)
    styles = {"approve": "green", "reject": "red"}
    with sessions() as s:
        reviews = list(s.scalars(stmt))
        if not reviews:
            console.print(f"no {decision} reviews" if decision else "no reviews")
            return
        table = Table("id", "time (UTC)", "who (role)", "decision", "job", "model", "study", "series", "comment")
        for r in reviews:
            job = r.job
            style = styles.get(r.decision, "yellow")
            table.add_row(str(r.id), f"{r.at:%Y-%m-%d %H:%M:%S}", escape(f"{r.who} ({r.role})"),
                          f"[{style}]{escape(r.decision)}[/{style}]", str(job.id),
                          escape(f"{job.model_name} {job.model_version}"), _study(job.series.study),
                          escape(job.series.description or "-"), escape(r.comment))
        console.print(table)


def series_folder(series: Series, data_dir: Path) -> Path | None:
    """The folder holding the instance files of ``series`` (the common parent of their paths,
    which are relative to ``data_dir``), or None when it has no instances (purged)."""
    parents = {os.path.dirname(i.path) for i in series.instances}
    if not parents:
        return None
    return data_dir / os.path.commonpath(sorted(parents))


def mask_path(job: Job, data_dir: Path) -> Path:
    """Where the worker keeps the label mask of a job (``results/<job id>/mask.npz``)."""
    return data_dir / "results" / str(job.id) / "mask.npz"


@app.command("candidates")
def reviews_candidates(limit: LimitOpt = 100, config: ConfigOpt = None) -> None:
    """The correction candidates for training, newest job first: each job whose results are
    rejected now, with its series (Series Instance UID and the folder of its image files), the
    job's label mask and the last rejecting review's comment."""
    from sqlalchemy import select  # deferred: start-up time

    from dicom_ai.cache.db import Job  # deferred: start-up time

    settings, sessions = index_of(config)
    data_dir = Path(settings.node.data_dir)
    with sessions() as s:
        jobs = list(s.scalars(select(Job).where(Job.review == ReviewState.REJECTED)
                              .order_by(Job.id.desc()).limit(limit)))
        if not jobs:
            console.print("no rejected jobs: no correction candidates")
            return
        for job in jobs:
            series = job.series
            rejects = [r for r in job.reviews if r.decision == "reject"]
            last = rejects[-1] if rejects else None
            by = (f"rejected by {escape(last.who)} ({escape(last.role)}) {last.at:%Y-%m-%d %H:%M:%S} UTC"
                  if last else "rejected")
            console.print(f"[bold]job {job.id}[/bold]: {escape(job.model_name)} {escape(job.model_version)}, "
                          f"{by}", soft_wrap=True)
            console.print(f"  study: {_study(series.study)}; series: {escape(series.description or '-')}",
                          soft_wrap=True)
            console.print(f"  series uid: {series.series_instance_uid}", soft_wrap=True)
            folder = series_folder(series, data_dir)
            console.print(f"  images: {escape(str(folder))}" if folder else
                          f"  images: none left (series {escape(series.state)})", soft_wrap=True)
            mask = mask_path(job, data_dir)
            console.print(f"  mask: {escape(str(mask))}" + ("" if mask.exists() else " (missing)"), soft_wrap=True)
            console.print(f"  comment: {escape(last.comment) if last and last.comment else '-'}", soft_wrap=True)

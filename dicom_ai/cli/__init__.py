"""The ``dicom-ai`` command: run the node, talk DICOM, look at jobs, train and evaluate models.

One module per group of sub-commands: :mod:`~dicom_ai.cli.node` (serve, echo, send, demo),
:mod:`~dicom_ai.cli.users`, :mod:`~dicom_ai.cli.jobs`, :mod:`~dicom_ai.cli.deliveries`,
:mod:`~dicom_ai.cli.reviews`, :mod:`~dicom_ai.cli.destinations`, :mod:`~dicom_ai.cli.rules`, :mod:`~dicom_ai.cli.studies`,
:mod:`~dicom_ai.cli.models` and :mod:`~dicom_ai.cli.model_runs` (both ``models``), :mod:`~dicom_ai.cli.index`, :mod:`~dicom_ai.cli.workers`. ``--help``
lists them in the order they are added below. Start-up stays quick: the commands import the
index, DICOM and inference modules when they run, not when the command line is parsed.
"""

from __future__ import annotations

import typer

from dicom_ai.cli import (
    deliveries,
    destinations,
    index,
    jobs,
    model_runs,  # noqa: F401  (adds test, export, train and evaluate to models.app)
    models,
    node,
    reviews,
    rules,
    studies,
    users,
    workers,
)

app = typer.Typer(help="dicom-ai: a DICOM node that runs AI models and returns DICOM SEG and SR.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
for command in node.COMMANDS:
    app.command()(command)
app.add_typer(users.app, name="users")
app.add_typer(jobs.app, name="jobs")
app.add_typer(deliveries.app, name="deliveries")
app.add_typer(reviews.app, name="reviews")
app.add_typer(destinations.app, name="destinations")
app.add_typer(rules.app, name="rules")
app.add_typer(studies.app, name="studies")
app.add_typer(models.app, name="models")
app.add_typer(index.app, name="index")
app.add_typer(workers.app, name="workers")


def main() -> None:  # pragma: no cover
    """Run the command line (``sys.argv``); exits with the command's status."""
    app()

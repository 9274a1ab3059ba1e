"""``dicom-ai index``: the index itself. ``migrate --to URL`` copies the whole index into an
empty database (SQLite to PostgreSQL as a site grows); exit status 2 when the target already
holds index rows, 1 when the copy fails (the target then holds nothing of it)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from dicom_ai.cli.common import ConfigOpt, console, err, settings_of

app = typer.Typer(help="The index: copy it to another database.", no_args_is_help=True)

ToOpt = Annotated[str, typer.Option("--to", help="SQLAlchemy URL of an empty database, e.g. "
                                                  "postgresql+psycopg://dicomai:PASSWORD@db/dicomai")]


@app.command("migrate")
def index_migrate(to: ToOpt, config: ConfigOpt = None) -> None:
    """Copy the index the configuration names, every row with its keys, into the empty database
    at --to, and compare the row counts. Stop the node first; afterwards set node.database_url
    to the new database and start it again. The instance and result files stay where they are."""
    from sqlalchemy.engine import make_url  # deferred: start-up time

    from dicom_ai.cache.transfer import IndexNotEmpty, copy_index  # deferred: start-up time

    settings = settings_of(config)
    source = settings.database_url
    shown = {url: make_url(url).render_as_string(hide_password=True) for url in (source, to)}
    if make_url(source) == make_url(to):
        err.print("--to names the index the configuration already uses")
        raise typer.Exit(2)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err) as bar:
        tasks: dict[str, int] = {}

        def progress(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.update(tasks[table], completed=done)  # type: ignore[arg-type]

        try:
            copied = copy_index(source, to, progress)
        except IndexNotEmpty as exc:
            err.print(f"[red]not copied:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
        except Exception as exc:  # noqa: BLE001 - one line naming the failure, not a traceback
            err.print(f"[red]not copied:[/red] {escape(type(exc).__name__)}: {escape(str(exc).splitlines()[0])}")
            raise typer.Exit(1) from None
    table = Table("table", "rows", title=f"copied {escape(shown[source])} -> {escape(shown[to])}")
    for name, n in copied.items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(f"next: set node.database_url = \"{escape(shown[to])}\" (with its password) and start the node")

"""``dicom-ai destinations``: where results go, and whether each answers.

``check`` of an unknown destination ends with exit status 2, of one that does not answer with
exit status 1.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dicom_ai.cli.common import ConfigOpt, console, err, settings_of

app = typer.Typer(help="Where results go.", no_args_is_help=True)


@app.command("list")
def destinations_list(config: ConfigOpt = None) -> None:
    """List the configured destinations."""
    from dicom_ai.export.destinations import handler_for  # deferred: start-up time

    settings = settings_of(config)
    table = Table("name", "kind", "where")
    for d in settings.destinations:
        table.add_row(d.name, d.kind, handler_for(d, settings).where())
    console.print(table)


PeerOpt = Annotated[str, typer.Option(help="For a return-to-sender destination: the peer's AE title.")]


@app.command("check")
def destinations_check(name: str, peer: PeerOpt = "", config: ConfigOpt = None) -> None:
    """Check that a destination answers (C-ECHO, a QIDO-RS query or a writable folder)."""
    from dicom_ai.export.outbox import check_destination  # deferred: start-up time

    settings = settings_of(config)
    dest = settings.destination(name)
    if dest is None:
        err.print(f"no destination {name!r} in [[destinations]]")
        raise typer.Exit(2)
    try:
        console.print(f"[green]ok[/green] {name}: {escape(check_destination(dest, settings, peer))}")
    except (ConnectionError, OSError) as exc:
        err.print(f"[red]failed[/red] {name}: {escape(str(exc))}")
        raise typer.Exit(1) from None

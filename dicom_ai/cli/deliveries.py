"""``dicom-ai deliveries``: the outbox, and sending its dead letters again.

``resend`` without ids or ``--failed`` ends with exit status 2.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from dicom_ai.cache.states import DeliveryState
from dicom_ai.cli.common import ConfigOpt, LimitOpt, console, err, index_of

DeliveryStateOpt = Annotated[Optional[str], typer.Option(help="Only this state: pending, sending, delivered, failed.")]
app = typer.Typer(help="The outbox: results on their way to destinations.", no_args_is_help=True)


@app.command("list")
def deliveries_list(state: DeliveryStateOpt = None, limit: LimitOpt = 100, config: ConfigOpt = None) -> None:
    """List deliveries, newest first; ``failed`` ones are dead letters (see ``resend``)."""
    from dicom_ai.cache import queries  # deferred: start-up time
    from dicom_ai.cache.db import Delivery  # deferred: start-up time

    _, sessions = index_of(config)
    table = Table("id", "state", "destination", "object", "job", "attempts", "next try (UTC)", "last status")
    styles: dict[str, str] = {DeliveryState.FAILED: "red", DeliveryState.DELIVERED: "green"}
    with sessions() as s:
        for d in queries.newest(s, Delivery, limit, state or ""):
            style = styles.get(d.state, "yellow")
            table.add_row(str(d.id), f"[{style}]{d.state}[/{style}]", d.destination,
                          f"{d.result.kind} {d.result.sop_instance_uid}", str(d.result.job_fk), str(d.attempts),
                          f"{d.next_attempt_at:%Y-%m-%d %H:%M:%S}" if d.state == DeliveryState.PENDING else "",
                          escape(d.last_status))
    console.print(table)


@app.command("resend")
def deliveries_resend(
    ids: Annotated[Optional[list[int]], typer.Argument(help="Delivery ids.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every dead letter.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Send deliveries again (a running node picks them up at its next outbox tick), with a new
    retry horizon."""
    from dicom_ai.export.outbox import resend  # deferred: start-up time

    if not ids and not failed:
        err.print("give delivery ids or --failed")
        raise typer.Exit(2)
    _, sessions = index_of(config)
    n = resend(sessions, ids, failed=failed)
    console.print(f"{n} deliveries due again")

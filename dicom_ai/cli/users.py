"""``dicom-ai users``: the people who may log in to the web pages.

A refused name, role or password, and an unknown user, end with exit status 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from dicom_ai.cli.common import ConfigOpt, console, err, index_of

RoleOpt = Annotated[str, typer.Option(help="reader (look), reviewer (also approve or reject results awaiting review) or admin (also act).")]
app = typer.Typer(help="People who may log in to the web pages.", no_args_is_help=True)


@app.command("add")
def users_add(name: str, role: RoleOpt = "reader", config: ConfigOpt = None) -> None:
    """Add a user, or change one's role and password (which ends the user's open web sessions);
    the password is read from standard input (first line)."""
    from dicom_ai.web.auth import add_user  # deferred: start-up time

    password = sys.stdin.readline().rstrip("\r\n")
    _, sessions = index_of(config)
    try:
        add_user(sessions, name, role, password)
    except ValueError as exc:
        err.print(f"[red]not added:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(f"user {escape(name)} ({role}) saved")


@app.command("revoke")
def users_revoke(name: str, config: ConfigOpt = None) -> None:
    """End every web session of a user at once (a stolen cookie, a lost workstation); the user
    can log in again. Changing role or password with ``users add`` does the same."""
    from dicom_ai.web.auth import revoke_sessions  # deferred: start-up time

    _, sessions = index_of(config)
    if not revoke_sessions(sessions, name):
        err.print(f"no user {escape(name)!r}")
        raise typer.Exit(2)
    console.print(f"sessions of {escape(name)} ended")

"""``dicom-ai serve``, ``echo``, ``send`` and ``demo``: run the node, and talk DICOM to one.

Exit status 0 on success, 1 when the node cannot start or the peer refuses or fails, 2 for a
configuration error or nothing to send.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicom_ai.cli.common import AecOpt, AetOpt, ConfigOpt, console, err, settings_of
from dicom_ai.logconf import setup_logging


def serve(config: ConfigOpt = None) -> None:
    """Run the node in the foreground until SIGINT/SIGTERM."""
    from dicom_ai.node import Node  # deferred: start-up time

    settings = settings_of(config)
    setup_logging()
    try:
        Node(settings).serve_forever()
    except OSError as exc:
        err.print(f"[red]cannot start:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def worker(config: ConfigOpt = None) -> None:
    """Run an inference worker in the foreground for a node with [node] executor = "celery":
    it takes jobs from the queues [worker] queues through [celery] broker_url, and needs the
    node's index (node.database_url) and its data_dir (a shared path). SIGINT/SIGTERM finish
    the running job, then stop."""
    from dicom_ai.worker import serve_celery  # deferred: start-up time (torch, Celery)

    settings = settings_of(config)
    setup_logging()
    try:
        serve_celery(settings)
    except ImportError as exc:
        err.print(f"[red]cannot start:[/red] {escape(str(exc))} (install the celery extra: pip install 'dicom-ai[celery]')")
        raise typer.Exit(1) from None


def echo(
    host: str,
    port: int,
    aet: AetOpt = "DICOM_AI_SCU",
    aec: AecOpt = "ANY-SCP",
    timeout: float = 10.0,
) -> None:
    """C-ECHO a DICOM node (verification, PS3.4 A)."""
    from dicom_ai.export.scu import AssociationFailed  # deferred: start-up time
    from dicom_ai.export.scu import echo as c_echo  # deferred: start-up time

    try:
        status = c_echo(host, port, aet=aet, aec=aec, timeout=timeout)
    except AssociationFailed as exc:
        err.print(f"[red]C-ECHO failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(f"C-ECHO {aec}@{host}:{port}: status 0x{status:04X}")
    raise typer.Exit(0 if status == 0 else 1)


def send(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    host: Annotated[str, typer.Option("--host", "-h")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p")] = 11112,
    aet: AetOpt = "DICOM_AI_SCU",
    aec: AecOpt = "DICOM_AI",
) -> None:
    """Send DICOM files by C-STORE, proposing only their SOP classes."""
    from dicom_ai.evaluate.series import expand_paths  # deferred: start-up time
    from dicom_ai.export.scu import AssociationFailed, store_files  # deferred: start-up time

    files = expand_paths(paths)
    if not files:
        err.print("[red]no files to send[/red]")
        raise typer.Exit(2)
    failed = 0
    with Progress(TextColumn("C-STORE"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err) as progress:
        task = progress.add_task("send", total=len(files))

        def on_sent(outcome) -> None:
            nonlocal failed
            if not outcome.ok:
                failed += 1
                progress.console.print(f"[yellow]{outcome.path}: {outcome.message}[/yellow]")
            progress.advance(task)

        try:
            outcomes = store_files(files, host, port, aet=aet, aec=aec, on_sent=on_sent)
        except AssociationFailed as exc:
            err.print(f"[red]send failed:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
    sent = sum(o.ok for o in outcomes)
    console.print(f"sent {sent} of {len(files)} files to {aec}@{host}:{port}")
    raise typer.Exit(0 if sent == len(files) else 1)


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's cache, results and preview.")] = Path("demo-out"),
) -> None:
    """Run the bundled real chest CT through the node (Orthanc as the PACS when installed)."""
    from dicom_ai.demo import run_demo  # deferred: start-up time

    os.environ.setdefault("DICOM_AI_LOG_LEVEL", "WARNING")  # inherited by the worker process
    setup_logging()
    raise typer.Exit(run_demo(out, console))


COMMANDS = (serve, worker, echo, send, demo)
"""The top-level commands, in the order ``dicom-ai --help`` lists them."""

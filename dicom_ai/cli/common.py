"""What the ``dicom-ai`` commands share: the two consoles, the common options, and opening the
settings, the index and the model registry.

A configuration error ends a command with exit status 2, a change the model registry refuses
with exit status 1; both print the reason on standard error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from dicom_ai.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker

T = TypeVar("T")

# piped output (scripts, grep, logs) is not cut at 80 columns
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML configuration file.")]
AetOpt = Annotated[str, typer.Option("--aet", help="Our (calling) AE title.")]
AecOpt = Annotated[str, typer.Option("--aec", help="The peer's (called) AE title.")]
LimitOpt = Annotated[int, typer.Option(help="At most this many rows, newest first.")]
UserOpt = Annotated[Optional[str], typer.Option("--user", help="Who makes the change (default: $SUDO_USER or the login name).")]


def settings_of(config: Path | None) -> Settings:
    """The settings from ``config`` (and the environment); exit status 2 when they are not
    valid."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def index_of(config: Path | None) -> tuple[Settings, sessionmaker]:
    """The settings and the index they name, migrated to the current schema."""
    from dicom_ai.cache.db import open_index  # deferred: start-up time

    settings = settings_of(config)
    return settings, open_index(settings.database_url)


def registry_of(config: Path | None) -> tuple[Settings, sessionmaker]:
    """Settings and index with the shipped models seeded, as the node would at start."""
    from dicom_ai.models.registry import seed_shipped  # deferred: start-up time

    settings, sessions = index_of(config)
    seed_shipped(sessions, settings)
    return settings, sessions


def registry_call(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``; exit status 1 with the reason when it raises ``RegistryError``."""
    from dicom_ai.models.registry import RegistryError  # deferred: start-up time

    try:
        return fn(*args, **kwargs)
    except RegistryError as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None

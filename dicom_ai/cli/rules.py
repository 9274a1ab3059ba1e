"""``dicom-ai rules``: which model runs on which series, and why not.

``test`` ends with exit status 1 when it finds no DICOM series at the path given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from dicom_ai.cache.states import SeriesState
from dicom_ai.cli.common import ConfigOpt, console, err, index_of

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker

    from dicom_ai.schedule.facts import SeriesFacts

app = typer.Typer(help="Routing rules: which model runs on which series.", no_args_is_help=True)


@app.command("test")
def rules_test(
    path: Annotated[str, typer.Argument(help="A DICOM file, a folder (searched recursively), or a "
                                             "Series Instance UID in the cache.")],
    calling_ae: Annotated[str, typer.Option(help="Calling AE title to assume for files.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Print, per series and per rule, whether its model would run and, if not, which condition
    failed. Nothing is queued."""
    from dicom_ai.evaluate.series import expand_paths  # deferred: start-up time
    from dicom_ai.receive.scp import image_storage_sop_classes  # deferred: start-up time
    from dicom_ai.schedule.facts import facts_from_files  # deferred: start-up time
    from dicom_ai.schedule.routing import decide, enabled_models, routes  # deferred: start-up time

    settings, sessions = index_of(config)
    classes = set(image_storage_sop_classes())
    target = Path(path)
    if target.exists():
        all_facts = facts_from_files(expand_paths([target]), classes, calling_ae)
    else:
        all_facts = _cached_series_facts(sessions, path, classes)
    if not all_facts:
        err.print(f"no DICOM series found in {path} (neither files nor a Series Instance UID in the cache)")
        raise typer.Exit(1)
    active = routes(settings, enabled_models(settings, sessions))
    for rule in settings.rules:
        if not rule.enabled:
            console.print(f"rule {rule.name!r} ({rule.model}) is disabled")
    for facts in all_facts:
        study = [f for f in all_facts if f.study_uid == facts.study_uid]
        thickness = f"{facts.slice_thickness:g} mm" if facts.slice_thickness is not None else "? mm"
        console.print(f"[bold]series {facts.series_uid}[/bold]: {facts.modality or '?'} "
                      f"{facts.body_part or '-'}, {facts.n_images} images (+{facts.n_localizers} "
                      f"localizers), {facts.orientation or '?'} {thickness}, '{facts.description}'")
        table = Table("rule", "model", "priority", "runs", "why not")
        for route in active:
            why_not = decide(route.rule, facts, study)
            table.add_row(route.rule.name, route.model.label, str(route.rule.priority),
                          "[red]no[/red]" if why_not else "[green]yes[/green]", escape(why_not or ""))
        console.print(table)


def _cached_series_facts(sessions: sessionmaker, series_uid: str, classes: set[str]) -> list[SeriesFacts]:
    """The facts of a cached series, then of the other series of its study that are not purged;
    empty when no series has this Series Instance UID. ``classes``: the SOP classes that count
    as images."""
    from dicom_ai.cache import queries  # deferred: start-up time
    from dicom_ai.schedule.completion import series_facts  # deferred: start-up time

    with sessions() as s:
        series = queries.series_by_uid(s, series_uid)
        if series is None:
            return []
        out = [series_facts(s, series, classes)]
        out += [series_facts(s, other, classes) for other in series.study.series
                if other.id != series.id and other.state != SeriesState.PURGED]
        return out

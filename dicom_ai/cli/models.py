"""``dicom-ai models``: the model registry (list, show, add, enable, disable, remove, history).

The commands that run a model (test, export, train, evaluate) are in
:mod:`dicom_ai.cli.model_runs`, on the same ``models`` group. A change the registry refuses
ends with exit status 1.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from dicom_ai.cli.common import ConfigOpt, LimitOpt, UserOpt, console, err, registry_call, registry_of
from dicom_ai.config import Settings
from dicom_ai.package.manifest import load_manifest

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker

app = typer.Typer(help="Models: the registry (add, enable, test, history, ...), training and evaluation.",
                  no_args_is_help=True)


@app.command("list")
def models_list(config: ConfigOpt = None) -> None:
    """List the registry's models, every version, and which one is active; then the packages the
    configuration pins with [[models]]."""
    from dicom_ai.cache import queries  # deferred: start-up time

    settings, sessions = registry_of(config)
    table = Table("name", "version", "task", "runtime", "active", "added (UTC)", "by", "sample s", "path",
                  title="model registry")
    with sessions() as s:
        for row in queries.model_versions(s):
            table.add_row(row.name, row.version, row.task, row.runtime, "[green]active[/green]" if row.active else "",
                          f"{row.added_at:%Y-%m-%d %H:%M}", row.added_by,
                          "" if row.sample_seconds is None else f"{row.sample_seconds:.2f}", row.path)
    console.print(table)
    if settings.models:
        pinned = Table("name", "version", "task", "enabled", "path", title="pinned by the configuration ([[models]])")
        for entry in settings.models:
            try:
                m = load_manifest(entry.path)
                pinned.add_row(m.name, m.version, m.task, "yes" if entry.enabled else "no", str(entry.path))
            except (OSError, ValueError) as exc:
                pinned.add_row("?", "?", "?", "yes" if entry.enabled else "no", f"{entry.path} ({escape(str(exc))[:80]})")
        console.print(pinned)


def package_of(settings: Settings, sessions: sessionmaker, spec: str) -> Path:
    """A package folder from NAME, NAME@VERSION (registry) or a folder path (one holding a
    ``manifest.json``); exit status 1 when the registry has no such model."""
    from dicom_ai.models.registry import find  # deferred: start-up time

    candidate = Path(spec)
    if candidate.is_dir() and (candidate / "manifest.json").is_file():
        return candidate
    with sessions() as s:
        return Path(registry_call(find, s, spec).path)


@app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or a package folder.")],
    config: ConfigOpt = None,
) -> None:
    """Everything about one model: manifest, outputs with their codes, rules, model card."""
    from dicom_ai.schedule.routing import enabled_models, routes  # deferred: start-up time

    settings, sessions = registry_of(config)
    package = package_of(settings, sessions, model)
    m = load_manifest(package)
    console.print(f"[bold]{m.name} {m.version}[/bold] — {m.task}, {m.modality} {m.body_region}: {escape(m.description)}")
    console.print(f"package: {package}")
    console.print(f"runtime: {m.runtime}, weights {m.weights}, sha256 {m.sha256}")
    if m.network is not None:
        console.print(f"network: {m.network.arch} {m.network.params}")
    console.print(f"input: axes {m.axcodes}, spacing {list(m.spacing)} mm, patch {list(m.patch_size)}, "
                  f"normalization {m.normalization}" + (f" {list(m.window)}" if m.window else "")
                  + (f", {m.input}" if m.task == "classification" else ""))
    if m.task == "segmentation":
        out = Table("value", "segment", "category", "type (SNOMED CT)", "colour")
        for lb in m.labels:
            out.add_row(str(lb.value), lb.name, lb.category.meaning,
                        f"{lb.type.scheme} {lb.type.value} {lb.type.meaning}", "#%02x%02x%02x" % tuple(lb.color))
    else:
        assert m.finding is not None  # ModelManifest: a classifier names its finding
        console.print(f"finding: {m.finding.scheme} {m.finding.value} {m.finding.meaning}"
                      + (f"; attention when probability < {m.attention_below}" if m.attention_below else ""))
        out = Table("index", "class", "code", "attention")
        for c in m.classes:
            out.add_row(str(c.index), c.name, f"{c.code.scheme} {c.code.value} {c.code.meaning}",
                        "yes" if c.attention else "")
    console.print(out)
    used = [r for r in routes(settings, enabled_models(settings, sessions)) if r.model.path == package]
    console.print("rules: " + (", ".join(f"{r.rule.name} (priority {r.rule.priority})" for r in used)
                               or "none: not active"))
    console.print(f"licence: {escape(m.license or '-')}")
    card = package / m.model_card
    if card.is_file():
        text = card.read_text(encoding="utf-8").strip().split("\n\n")
        console.print(f"model card ({card}):\n" + escape("\n\n".join(text[:2])))


@app.command("add")
def models_add(
    path: Annotated[Path, typer.Argument(help="Package folder, .zip of one, or MONAI bundle folder.")],
    activate: Annotated[Optional[bool], typer.Option("--enable/--no-enable", help="Make it the active version "
                                                     "(default: only if none of its name is active).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Device for the trial run (default: CUDA if any).")] = None,
    user: UserOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add a model package: verify its checksum, run it once on the built-in sample, keep a copy."""
    from dicom_ai.models.registry import add_package, current_user, run_on_sample  # deferred: start-up time

    settings, sessions = registry_of(config)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err) as progress:
        step = progress.add_task("unpack, validate, verify sha256", total=2)

        def check(package: Path):
            progress.update(step, advance=1, description="run on the built-in sample")
            return run_on_sample(package, device)

        row, notes = registry_call(add_package, sessions, settings, path, user or current_user(), activate=activate,
                                    check=check)
        progress.update(step, completed=2, description="added")
    for note in notes:
        console.print(escape(note))
    state = "active" if row.active else f"not active (dicom-ai models enable {row.name}@{row.version})"
    console.print(f"added {row.name} {row.version} ({row.task}, {row.runtime}): {state}")


class _Change(NamedTuple):
    """A registry change on one model, made by one person: its argument, help and outcome."""

    argument: str
    doc: str
    #: the line printed when it is done; ``{row}`` is the changed ModelVersion
    done: str
    #: (registry module, sessions, settings, model argument, who) -> the changed ModelVersion
    call: Callable[[Any, sessionmaker, Settings, str, str], Any]


#: ``dicom-ai models enable | disable | remove``, registered from this table in this order
_CHANGES: dict[str, _Change] = {
    "enable": _Change("NAME (its newest version) or NAME@VERSION.",
                      "Make a version the active one of its model (the others of that name stop being used).",
                      "{row.name} {row.version} is active",
                      lambda r, sessions, settings, spec, who: r.enable(sessions, spec, who)),
    "disable": _Change("Model NAME.",
                       "Stop using a model: no version of it stays active (queued jobs still run).",
                       "{row.name} is disabled (was {row.version})",
                       lambda r, sessions, settings, name, who: r.disable(sessions, name, who)),
    "remove": _Change("NAME@VERSION (or NAME when it has one version).",
                      "Remove a version that is not active and has no job waiting, with its files.",
                      "removed {row.name} {row.version}",
                      lambda r, sessions, settings, spec, who: r.remove(sessions, settings, spec, who)),
}


def _change_command(name: str, change: _Change) -> Callable[..., None]:
    def command(model: str = typer.Argument(..., help=change.argument),
                user: UserOpt = None, config: ConfigOpt = None) -> None:
        from dicom_ai.models import registry  # deferred: start-up time

        settings, sessions = registry_of(config)
        row = registry_call(change.call, registry, sessions, settings, model, user or registry.current_user())
        console.print(change.done.format(row=row))

    command.__name__ = f"models_{name}"
    command.__doc__ = change.doc
    return command


for _name, _change in _CHANGES.items():
    app.command(_name)(_change_command(_name, _change))


@app.command("history")
def models_history(name: Annotated[Optional[str], typer.Argument(help="Only this model.")] = None,
                   limit: LimitOpt = 100, config: ConfigOpt = None) -> None:
    """Every change to the registry, newest first: when, who, what."""
    from dicom_ai.cache import queries  # deferred: start-up time

    _, sessions = registry_of(config)
    table = Table("when (UTC)", "who", "what", "model", "version", "detail")
    with sessions() as s:
        for ev in queries.model_events(s, limit, name):
            table.add_row(f"{ev.at:%Y-%m-%d %H:%M:%S}", ev.who, ev.action, ev.name, ev.version, escape(ev.detail))
    console.print(table)

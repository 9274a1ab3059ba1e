"""The ``dicom-ai`` command: run the node, talk DICOM, look at jobs, train and evaluate models."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dicom_ai.config import ConfigError, Settings, load_settings

app = typer.Typer(help="dicom-ai: a DICOM node that runs AI models and returns DICOM SEG and SR.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
jobs_app = typer.Typer(help="Inference jobs.", no_args_is_help=True)
studies_app = typer.Typer(help="Studies in the cache.", no_args_is_help=True)
models_app = typer.Typer(help="Models: the registry (add, enable, test, history, ...), training and evaluation.",
                         no_args_is_help=True)
rules_app = typer.Typer(help="Routing rules: which model runs on which series.", no_args_is_help=True)
deliveries_app = typer.Typer(help="The outbox: results on their way to destinations.", no_args_is_help=True)
destinations_app = typer.Typer(help="Where results go.", no_args_is_help=True)
users_app = typer.Typer(help="People who may log in to the web pages.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(jobs_app, name="jobs")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(destinations_app, name="destinations")
app.add_typer(rules_app, name="rules")
app.add_typer(studies_app, name="studies")
app.add_typer(models_app, name="models")

# piped output (scripts, grep, logs) is not cut at 80 columns
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML configuration file.")]
AetOpt = Annotated[str, typer.Option("--aet", help="Our (calling) AE title.")]
AecOpt = Annotated[str, typer.Option("--aec", help="The peer's (called) AE title.")]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run the node in the foreground until SIGINT/SIGTERM."""
    from dicom_ai.logconf import setup_logging
    from dicom_ai.node import Node

    settings = _settings(config)
    setup_logging()
    try:
        Node(settings).serve_forever()
    except OSError as exc:
        err.print(f"[red]cannot start:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


@app.command()
def echo(
    host: str,
    port: int,
    aet: AetOpt = "DICOM_AI_SCU",
    aec: AecOpt = "ANY-SCP",
    timeout: float = 10.0,
) -> None:
    """C-ECHO a DICOM node (verification, PS3.4 A)."""
    from dicom_ai.export.scu import AssociationFailed
    from dicom_ai.export.scu import echo as c_echo

    try:
        status = c_echo(host, port, aet=aet, aec=aec, timeout=timeout)
    except AssociationFailed as exc:
        err.print(f"[red]C-ECHO failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(f"C-ECHO {aec}@{host}:{port}: status 0x{status:04X}")
    raise typer.Exit(0 if status == 0 else 1)


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    host: Annotated[str, typer.Option("--host", "-h")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p")] = 11112,
    aet: AetOpt = "DICOM_AI_SCU",
    aec: AecOpt = "DICOM_AI",
) -> None:
    """Send DICOM files by C-STORE, proposing only their SOP classes."""
    from dicom_ai.evaluate.series import expand_paths
    from dicom_ai.export.scu import AssociationFailed, store_files

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


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's cache, results and preview.")] = Path("demo-out"),
) -> None:
    """Run the bundled real chest CT through the node (Orthanc as the PACS when installed)."""
    from dicom_ai.demo import run_demo
    from dicom_ai.logconf import setup_logging

    os.environ.setdefault("DICOM_AI_LOG_LEVEL", "WARNING")  # inherited by the worker process
    setup_logging()
    raise typer.Exit(run_demo(out, console))


def _index(config: Path | None):
    from dicom_ai.cache.db import open_index

    settings = _settings(config)
    return settings, open_index(settings.database_url)


@jobs_app.command("list")
def jobs_list(config: ConfigOpt = None, limit: int = 50) -> None:
    """List the most recent jobs, and the recent series that no model was run on, with why."""
    from sqlalchemy import select

    from dicom_ai.cache.db import Job, Series
    from dicom_ai.web.data import findings_text

    _, sessions = _index(config)
    table = Table("id", "state", "model", "rule", "series", "complete by", "created (UTC)", "s",
                  "findings / reason")
    with sessions() as s:
        for job in s.scalars(select(Job).order_by(Job.id.desc()).limit(limit)):
            detail = job.reason or findings_text(job.findings)
            table.add_row(str(job.id), job.state, f"{job.model_name} {job.model_version}", job.rule,
                          "…" + job.series.series_instance_uid[-12:], job.series.completion_signal or "",
                          f"{job.created_at:%Y-%m-%d %H:%M:%S}", str((job.timings or {}).get("total", "")),
                          detail)
        console.print(table)
        idle = s.scalars(
            select(Series).where(Series.state == "complete", ~Series.jobs.any())
            .order_by(Series.completed_at.desc()).limit(limit)
        ).all()
        if idle:
            table = Table("series sent to no model", "complete by", "why (per rule)")
            for series in idle:
                table.add_row(series.series_instance_uid, series.completion_signal or "",
                              escape(series.routing_note.replace("; ", "\n")))
            console.print(table)


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOpt = None) -> None:
    """Everything about one job: series, completion, routing, timings, findings, results and
    deliveries."""
    from dicom_ai.cache.db import Job

    _, sessions = _index(config)
    with sessions() as s:
        job = s.get(Job, job_id)
        if job is None:
            err.print(f"no job {job_id}")
            raise typer.Exit(1)
        series = job.series
        console.print(f"[bold]job {job.id}[/bold]: {job.state}" + (f" — {job.reason}" if job.reason else ""))
        console.print(f"model: {job.model_name} {job.model_version} ({job.model_path})")
        console.print(f"rule: {job.rule or '-'}, priority {job.priority}")
        console.print(f"series: {series.series_instance_uid} ({series.modality}, {len(series.instances)} instances, "
                      f"'{series.description}') from {series.calling_ae_title}")
        console.print(f"completed: {series.completed_at} by {series.completion_signal}")
        console.print("routing:")
        for note in series.routing_note.split("; "):
            console.print(f"  {escape(note)}", soft_wrap=True)
        console.print(f"created {job.created_at}, started {job.started_at}, finished {job.finished_at}, attempts {job.attempts}")
        if job.timings:
            console.print("timings (s): " + ", ".join(f"{k} {v}" for k, v in job.timings.items()))
        for name, f in (job.findings or {}).items():
            if "class" in f:
                console.print(f"finding: {name}: {f['class']}, probability {f['probability']}"
                              + (" — needs attention" if f.get("attention") else "")
                              + f" ({', '.join(f'{k} {v}' for k, v in f.get('probabilities', {}).items())})")
            else:
                console.print(f"finding: {name}: {f.get('volume_ml')} mL, mean {f.get('mean_hu')} HU"
                              + (f" — needs attention: {'; '.join(f['implausible'])}" if f.get("implausible") else ""))
        for r in job.results:
            console.print(f"result {r.kind}: {r.sop_instance_uid} ({r.path})")
            for d in r.deliveries:
                console.print(f"  -> {d.destination}: {d.state}, attempts {d.attempts}, {d.last_status}")


@deliveries_app.command("list")
def deliveries_list(
    state: Annotated[Optional[str], typer.Option(help="Only this state: pending, sending, delivered, failed.")] = None,
    limit: int = 100,
    config: ConfigOpt = None,
) -> None:
    """List deliveries, newest first; ``failed`` ones are dead letters (see ``resend``)."""
    from sqlalchemy import select

    from dicom_ai.cache.db import Delivery

    _, sessions = _index(config)
    table = Table("id", "state", "destination", "object", "job", "attempts", "next try (UTC)", "last status")
    with sessions() as s:
        stmt = select(Delivery).order_by(Delivery.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(Delivery.state == state)
        for d in s.scalars(stmt):
            style = {"failed": "red", "delivered": "green"}.get(d.state, "yellow")
            table.add_row(str(d.id), f"[{style}]{d.state}[/{style}]", d.destination,
                          f"{d.result.kind} {d.result.sop_instance_uid}", str(d.result.job_fk), str(d.attempts),
                          f"{d.next_attempt_at:%Y-%m-%d %H:%M:%S}" if d.state == "pending" else "",
                          escape(d.last_status))
    console.print(table)


@deliveries_app.command("resend")
def deliveries_resend(
    ids: Annotated[Optional[list[int]], typer.Argument(help="Delivery ids.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every dead letter.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Send deliveries again (a running node picks them up at its next outbox tick), with a new
    retry horizon."""
    from dicom_ai.export.outbox import resend

    if not ids and not failed:
        err.print("give delivery ids or --failed")
        raise typer.Exit(2)
    _, sessions = _index(config)
    n = resend(sessions, ids, failed=failed)
    console.print(f"{n} deliveries due again")


@destinations_app.command("list")
def destinations_list(config: ConfigOpt = None) -> None:
    """List the configured destinations."""
    settings = _settings(config)
    table = Table("name", "kind", "where")
    for d in settings.destinations:
        where = {"dicom": f"{d.ae_title}@{d.host}:{d.port}", "return": "the peer that sent the study",
                 "folder": str(d.path), "stow": str(d.url)}[d.kind]
        table.add_row(d.name, d.kind, where)
    console.print(table)


@destinations_app.command("check")
def destinations_check(
    name: str,
    peer: Annotated[str, typer.Option(help="For a return-to-sender destination: the peer's AE title.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Check that a destination answers (C-ECHO, a QIDO-RS query or a writable folder)."""
    from dicom_ai.export.outbox import check_destination

    settings = _settings(config)
    dest = settings.destination(name)
    if dest is None:
        err.print(f"no destination {name!r} in [[destinations]]")
        raise typer.Exit(2)
    try:
        console.print(f"[green]ok[/green] {name}: {escape(check_destination(dest, settings, peer))}")
    except (ConnectionError, OSError) as exc:
        err.print(f"[red]failed[/red] {name}: {escape(str(exc))}")
        raise typer.Exit(1) from None


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="reader (look) or admin (also act).")] = "reader",
    config: ConfigOpt = None,
) -> None:
    """Add a user, or change one's role and password (which ends the user's open web sessions);
    the password is read from standard input (first line)."""
    from dicom_ai.web.auth import add_user

    password = sys.stdin.readline().rstrip("\r\n")
    _, sessions = _index(config)
    try:
        add_user(sessions, name, role, password)
    except ValueError as exc:
        err.print(f"[red]not added:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(f"user {escape(name)} ({role}) saved")


@users_app.command("revoke")
def users_revoke(name: str, config: ConfigOpt = None) -> None:
    """End every web session of a user at once (a stolen cookie, a lost workstation); the user
    can log in again. Changing role or password with ``users add`` does the same."""
    from dicom_ai.web.auth import revoke_sessions

    _, sessions = _index(config)
    if not revoke_sessions(sessions, name):
        err.print(f"no user {escape(name)!r}")
        raise typer.Exit(2)
    console.print(f"sessions of {escape(name)} ended")


@rules_app.command("test")
def rules_test(
    path: Annotated[str, typer.Argument(help="A DICOM file, a folder (searched recursively), or a "
                                             "Series Instance UID in the cache.")],
    calling_ae: Annotated[str, typer.Option(help="Calling AE title to assume for files.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Print, per series and per rule, whether its model would run and, if not, which condition
    failed. Nothing is queued."""
    from dicom_ai.receive.scp import image_storage_sop_classes
    from dicom_ai.schedule.facts import facts_from_files
    from dicom_ai.schedule.routing import decide, enabled_models, routes

    from dicom_ai.evaluate.series import expand_paths

    settings, sessions = _index(config)
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


def _cached_series_facts(sessions, series_uid: str, classes: set[str]) -> list:
    from sqlalchemy import select

    from dicom_ai.cache.db import Series
    from dicom_ai.schedule.completion import series_facts

    with sessions() as s:
        series = s.scalar(select(Series).where(Series.series_instance_uid == series_uid))
        if series is None:
            return []
        out = [series_facts(s, series, classes)]
        out += [series_facts(s, other, classes) for other in series.study.series
                if other.id != series.id and other.state != "purged"]
        return out


@studies_app.command("list")
def studies_list(config: ConfigOpt = None) -> None:
    """List studies with their series and instance counts."""
    from sqlalchemy import select

    from dicom_ai.cache.db import Study

    _, sessions = _index(config)
    table = Table("patient", "study date", "study UID", "series", "instances", "series states")
    with sessions() as s:
        for st in s.scalars(select(Study).order_by(Study.id.desc())):
            table.add_row(st.patient.patient_id, st.study_date, st.study_instance_uid, str(len(st.series)),
                          str(sum(len(se.instances) for se in st.series)),
                          ", ".join(sorted({se.state for se in st.series})))
    console.print(table)


UserOpt = Annotated[Optional[str], typer.Option("--user", help="Who makes the change (default: $SUDO_USER or the login name).")]


def _registry(config: Path | None):
    """Settings and index with the shipped models seeded, as the node would at start."""
    from dicom_ai.models.registry import seed_shipped

    settings, sessions = _index(config)
    seed_shipped(sessions, settings)
    return settings, sessions


def _registry_call(fn, *args, **kwargs):
    from dicom_ai.models.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except RegistryError as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


@models_app.command("list")
def models_list(config: ConfigOpt = None) -> None:
    """List the registry's models, every version, and which one is active; then the packages the
    configuration pins with [[models]]."""
    from sqlalchemy import select

    from dicom_ai.cache.db import ModelVersion
    from dicom_ai.models.manifest import load_manifest

    settings, sessions = _registry(config)
    table = Table("name", "version", "task", "runtime", "active", "added (UTC)", "by", "sample s", "path",
                  title="model registry")
    with sessions() as s:
        for row in s.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id)):
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


def _package_of(settings: Settings, sessions, spec: str) -> Path:
    """A package folder from NAME, NAME@VERSION (registry) or a folder path."""
    from dicom_ai.models.registry import find

    candidate = Path(spec)
    if candidate.is_dir() and (candidate / "manifest.json").is_file():
        return candidate
    with sessions() as s:
        return Path(_registry_call(find, s, spec).path)


@models_app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or a package folder.")],
    config: ConfigOpt = None,
) -> None:
    """Everything about one model: manifest, outputs with their codes, rules, model card."""
    from dicom_ai.models.manifest import load_manifest
    from dicom_ai.schedule.routing import enabled_models, routes

    settings, sessions = _registry(config)
    package = _package_of(settings, sessions, model)
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


@models_app.command("add")
def models_add(
    path: Annotated[Path, typer.Argument(help="Package folder, .zip of one, or MONAI bundle folder.")],
    activate: Annotated[Optional[bool], typer.Option("--enable/--no-enable", help="Make it the active version "
                                                     "(default: only if none of its name is active).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Device for the trial run (default: CUDA if any).")] = None,
    user: UserOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add a model package: verify its checksum, run it once on the built-in sample, keep a copy."""
    from dicom_ai.models.registry import add_package, current_user, run_on_sample

    settings, sessions = _registry(config)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err) as progress:
        step = progress.add_task("unpack, validate, verify sha256", total=2)

        def check(package: Path):
            progress.update(step, advance=1, description="run on the built-in sample")
            return run_on_sample(package, device)

        row, notes = _registry_call(add_package, sessions, settings, path, user or current_user(), activate=activate,
                                    check=check)
        progress.update(step, completed=2, description="added")
    for note in notes:
        console.print(escape(note))
    state = "active" if row.active else f"not active (dicom-ai models enable {row.name}@{row.version})"
    console.print(f"added {row.name} {row.version} ({row.task}, {row.runtime}): {state}")


@models_app.command("enable")
def models_enable(
    model: Annotated[str, typer.Argument(help="NAME (its newest version) or NAME@VERSION.")],
    user: UserOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Make a version the active one of its model (the others of that name stop being used)."""
    from dicom_ai.models.registry import current_user, enable

    _, sessions = _registry(config)
    row = _registry_call(enable, sessions, model, user or current_user())
    console.print(f"{row.name} {row.version} is active")


@models_app.command("disable")
def models_disable(
    name: Annotated[str, typer.Argument(help="Model NAME.")],
    user: UserOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Stop using a model: no version of it stays active (queued jobs still run)."""
    from dicom_ai.models.registry import current_user, disable

    _, sessions = _registry(config)
    row = _registry_call(disable, sessions, name, user or current_user())
    console.print(f"{row.name} is disabled (was {row.version})")


@models_app.command("remove")
def models_remove(
    model: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME when it has one version).")],
    user: UserOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Remove a version that is not active and has no job waiting, with its files."""
    from dicom_ai.models.registry import current_user, remove

    settings, sessions = _registry(config)
    row = _registry_call(remove, sessions, settings, model, user or current_user())
    console.print(f"removed {row.name} {row.version}")


@models_app.command("history")
def models_history(
    name: Annotated[Optional[str], typer.Argument(help="Only this model.")] = None,
    limit: int = 100,
    config: ConfigOpt = None,
) -> None:
    """Every change to the registry, newest first: when, who, what."""
    from sqlalchemy import select

    from dicom_ai.cache.db import ModelEvent

    _, sessions = _registry(config)
    query = select(ModelEvent).order_by(ModelEvent.id.desc()).limit(limit)
    if name:
        query = query.where(ModelEvent.name == name)
    table = Table("when (UTC)", "who", "what", "model", "version", "detail")
    with sessions() as s:
        for ev in s.scalars(query):
            table.add_row(f"{ev.at:%Y-%m-%d %H:%M:%S}", ev.who, ev.action, ev.name, ev.version, escape(ev.detail))
    console.print(table)


@models_app.command("test")
def models_test(
    model: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or a package folder.")],
    series: Annotated[str, typer.Argument(help="DICOM series folder or file list, or a Series Instance UID in the cache.")],
    reference: Annotated[Optional[Path], typer.Option(help="Reference segmentation: DICOM SEG, RTSTRUCT or NIfTI.")] = None,
    mapping: Annotated[list[str], typer.Option("--map", help="Reference segment/ROI/value to label: "
                                                "'GTV=1', '10,11=Left lung'. Repeatable.")] = [],
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda (default: CUDA if any).")] = None,
    user: UserOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run a model on a series; print timings and the result, and with --reference the Dice per label."""
    import time

    import numpy as np

    from dicom_ai.infer.runtime import load_model
    from dicom_ai.infer.volume import load_series
    from dicom_ai.models.registry import current_user, record

    settings, sessions = _registry(config)
    package = _package_of(settings, sessions, model)
    files = _series_files(settings, sessions, series)
    timings: dict[str, float] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err) as progress:
        step = progress.add_task(f"read {len(files)} files", total=4 if reference else 3)
        t = time.perf_counter()
        volume = load_series(files)
        timings["read series"] = time.perf_counter() - t
        progress.update(step, advance=1, description="load the model")
        loaded = load_model(package, device=device)
        timings["load model"] = loaded.load_seconds
        progress.update(step, advance=1, description=f"run on {volume.shape[0]} slices ({loaded.device})")
        output, run = loaded.predict(volume)
        timings.update(run)
        if reference is not None:
            progress.update(step, advance=1, description="compare with the reference")
        else:
            progress.update(step, advance=1, description="done")
        dice = None
        if reference is not None:
            from dicom_ai.evaluate.reference import dice_scores, parse_mapping, read_reference

            try:
                ref = read_reference(reference, volume, loaded.manifest.labels,
                                     parse_mapping(mapping, loaded.manifest.labels) if mapping else None)
            except ValueError as exc:
                err.print(f"[red]reference not usable:[/red] {escape(str(exc))}")
                raise typer.Exit(1) from None
            no_match = ref.no_match_message()
            if no_match:  # nothing to score: say which names the reference has
                err.print(f"[red]reference not usable:[/red] {escape(no_match)}")
                raise typer.Exit(1)
            dice = dice_scores(output, ref, loaded.manifest.labels)
            progress.update(step, advance=1)
    m = loaded.manifest
    console.print(f"[bold]{m.label}[/bold] on {volume.shape[0]} × {volume.shape[1]} × {volume.shape[2]} voxels "
                  f"({', '.join(f'{v:.2f}' for v in volume.spacing)} mm), device {loaded.device}")
    times = Table("step", "s")
    for key, value in timings.items():
        times.add_row(key, f"{value:.3f}")
    times.add_row("[bold]inference total[/bold]", f"{sum(v for k, v in run.items()):.3f}")
    console.print(times)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    summary: list[str] = []
    if m.task == "segmentation":
        table = Table("label", "volume mL", *(("reference mL", "Dice") if dice is not None else ()))
        for lb in m.labels:
            cells = [lb.name, f"{(output == lb.value).sum() * voxel_ml:.1f}"]
            if dice is not None:
                d = dice.get(lb.value)
                cells += [f"{(ref.mask == lb.value).sum() * voxel_ml:.1f}", "-" if d is None else f"{d:.4f}"]
                summary.append(f"{lb.name} Dice {'-' if d is None else f'{d:.4f}'}")
            table.add_row(*cells)
        console.print(table)
        if dice is not None and ref.unmatched:
            console.print(f"reference parts matching no label (ignored): {escape(', '.join(ref.unmatched))}")
    else:
        table = Table("class", "probability")
        for c, p in zip(output.classes, output.probabilities):
            table.add_row(("[bold]" + c.name + "[/bold]") if c is output.top else c.name, f"{p:.4f}")
        console.print(table)
        summary.append(f"{output.top.name} {output.probability:.3f}" + (" (attention)" if output.attention else ""))
    with sessions.begin() as s:
        record(s, user or current_user(), "test", m.name, m.version,
               f"on {series} ({volume.shape[0]} slices): inference {sum(run.values()):.2f} s"
               + (f"; {'; '.join(summary)}" if summary else ""))


def _cache_lookup(settings: Settings, sessions):
    """Series Instance UID -> its cached files (for :mod:`dicom_ai.evaluate.series`)."""

    def lookup(uid: str) -> list[Path]:
        from sqlalchemy import select

        from dicom_ai.cache.db import Series
        from dicom_ai.cache.store import FileStore

        store = FileStore(settings.node.data_dir)
        with sessions() as s:
            row = s.scalar(select(Series).where(Series.series_instance_uid == uid))
            return [store.abspath(i.path) for i in row.instances] if row is not None else []

    return lookup


def _series_files(settings: Settings, sessions, series: str) -> list[Path]:
    from dicom_ai.evaluate.series import series_files

    try:
        return series_files(series, _cache_lookup(settings, sessions))
    except FileNotFoundError as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None


@models_app.command("export")
def models_export(
    package: Annotated[Path, typer.Argument(help="Package folder (runtime monai or torchscript).")],
    output: Annotated[Path, typer.Argument(help="New package folder to write.")],
    runtime: Annotated[str, typer.Option(help="torchscript or onnx.")] = "torchscript",
    version: Annotated[Optional[str], typer.Option(help="Version of the new package (default: the same).")] = None,
    config: ConfigOpt = None,  # accepted like every command's; the export reads no settings
) -> None:
    """Write a package's model as TorchScript or ONNX (a new package, same manifest otherwise);
    `dicom-ai models add` it next."""
    from dicom_ai.models.convert import convert_package

    try:
        convert_package(package, output, runtime, version=version)
    except ValueError as exc:
        err.print(f"[red]not exported:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(f"wrote {output} ({runtime})")


class _LossBar:
    """A rich progress bar for training: stage, steps, the current loss, time left."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=err)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, stage: str, step: int, total: int, loss: float | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, loss="-")
        self.progress.update(self.tasks[stage], completed=step, loss="-" if loss is None else f"{loss:.4f}")

    def report(self, line: str) -> None:
        self.progress.console.print(escape(line))


@models_app.command("train")
def models_train(
    output_dir: Annotated[Path, typer.Argument(help="Model package folder to write.")],
    dataset: Annotated[Optional[Path], typer.Option(help="A dataset file (.toml or .csv) of the site's own cases; "
                                                         "without it, a built-in recipe (--task).")] = None,
    base: Annotated[Optional[str], typer.Option("--from", help="Fine-tune this package: NAME, NAME@VERSION or a "
                                                             "folder.")] = None,
    folds: Annotated[int, typer.Option(help="Cross-validate by patient in K folds first (0: no).")] = 0,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: CUDA if any).")] = None,
    task: Annotated[str, typer.Option(help="Built-in recipe: 'lung' (the lung segmenter) or 'region' (the "
                                           "body-region classifier).")] = "lung",
    design: Annotated[str, typer.Option(help="lung: '2d' (slice-wise U-Net, the shipped 2.0.0) or '3d'.")] = "2d",
    data_root: Annotated[Optional[Path], typer.Option(help="Built-in recipes: real data; default ../shared/data.")] = None,
    seed: int = 0,
    iterations: Annotated[Optional[int], typer.Option(help="Optimiser steps (dataset 1000, lung 2d 1200, region 1000).")] = None,
    max_minutes: Annotated[float, typer.Option(help="Wall-clock stop of each training.")] = 60.0,
    cv_dir: Annotated[Optional[Path], typer.Option(help="Built-in recipes: first the cross-validation into this "
                                                        "folder (lung: leave one patient out; region: two folds).")] = None,
    version: Annotated[Optional[str], typer.Option(help="Version written into the manifest.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Dataset: model name (default: the base's, or the recipe's).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Train a model and write a package (then `dicom-ai models add` it): on a dataset file of
    the site's own cases, or with a built-in recipe on the real CTs (reproduces models/)."""
    import json

    from dicom_ai.logconf import setup_logging

    setup_logging()
    with _LossBar() as bar:
        if dataset is not None:
            from dicom_ai.train.dataset import DatasetError, train_on_dataset

            settings, sessions = _registry(config)
            base_dir = _package_of(settings, sessions, base) if base else None
            try:
                result = train_on_dataset(dataset, output_dir, base=base_dir, folds=folds, device=device,
                                          iterations=iterations or 1000, version=version, name=name, seed=seed,
                                          max_minutes=max_minutes, lookup=_cache_lookup(settings, sessions),
                                          progress=bar.update, report=bar.report)
            except DatasetError as exc:
                err.print(f"[red]not trained:[/red] {escape(str(exc))}")
                raise typer.Exit(1) from None
        elif task == "lung":
            from dicom_ai.train.lung import DESIGNS, crossvalidate, train_lung

            if design not in DESIGNS:
                err.print(f"[red]unknown design {design!r}:[/red] {', '.join(DESIGNS)}")
                raise typer.Exit(2)
            steps = iterations or DESIGNS[design].iterations
            if cv_dir:
                crossvalidate(cv_dir, design, data_root, seed=seed, iterations=steps)
            result = train_lung(output_dir, design, data_root, version=version or "2.0.0", seed=seed,
                                iterations=steps, max_minutes=max_minutes,
                                on_step=lambda s, loss: bar.update("lung " + design, s + 1, steps, loss))
        elif task == "region":
            from dicom_ai.train.region import crossvalidate_region, train_region_model

            cv = crossvalidate_region(cv_dir, data_root=data_root, seed=seed) if cv_dir else None
            result = train_region_model(output_dir, data_root=data_root, seed=seed,
                                        iterations=iterations or 1000, max_minutes=max_minutes, crossvalidation=cv,
                                        version=version or "1.0.0")
        else:
            err.print(f"[red]unknown task {task!r}:[/red] 'lung' or 'region'")
            raise typer.Exit(2)
    console.print_json(json.dumps(result, default=str))


@models_app.command("evaluate")
def models_evaluate(
    model: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or a package folder.")],
    target: Annotated[str, typer.Argument(help="A dataset file (.toml or .csv), or one series (folder, NIfTI CT, "
                                               "Series Instance UID) with --reference or --class.")],
    reference: Annotated[Optional[Path], typer.Option(help="One series: its SEG, RTSTRUCT or NIfTI reference.")] = None,
    mapping: Annotated[list[str], typer.Option("--map", help="One series: reference name to label, e.g. "
                                                             "'Lung_L=Left lung'. Repeatable.")] = [],
    klass: Annotated[Optional[str], typer.Option("--class", help="One series: its reference class.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for evaluation.json, evaluation.md and the overlay "
                                                     "PNGs (default: evaluation-<model>-<version>).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: CUDA if any).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Score a model on a dataset: Dice, HD95, mean surface distance and volume difference per
    label and case (segmentation), or accuracy, sensitivity, specificity, precision, F1, ROC AUC
    and the confusion matrix (classification), with bootstrap 95 % CIs."""
    from dicom_ai.evaluate.run import evaluate_cases, write_report
    from dicom_ai.models.manifest import load_manifest
    from dicom_ai.train.dataset import DatasetCase, DatasetError, load_dataset

    settings, sessions = _registry(config)
    package = _package_of(settings, sessions, model)
    m = load_manifest(package)
    if target.lower().endswith((".toml", ".csv")):
        try:
            ds = load_dataset(Path(target))
        except DatasetError as exc:
            err.print(f"[red]dataset not usable:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from None
        cases = ds.cases
    elif reference is None and klass is None:
        err.print("one series needs --reference (segmentation) or --class (classification), or give a dataset file")
        raise typer.Exit(2)
    else:
        cases = [DatasetCase(series=target, reference=str(reference) if reference else None, klass=klass,
                             mapping=list(mapping))]
    out = out or Path(f"evaluation-{m.name}-{m.version}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err) as progress:
        bar = progress.add_task("evaluate", total=len(cases))

        def step(i: int, n: int, name: str) -> None:
            progress.update(bar, completed=i - 1, description=f"case {escape(name)}")

        result = evaluate_cases(package, cases, lookup=_cache_lookup(settings, sessions), device=device,
                                overlays=out / "overlays", progress=step)
        progress.update(bar, completed=len(cases), description="done")
    json_path, md_path = write_report(result, out)
    _print_evaluation(result)
    console.print(f"wrote {json_path} and {md_path}")
    if any("error" in r for r in result["cases"]):
        for r in result["cases"]:
            if "error" in r:
                err.print(f"[yellow]not scored:[/yellow] {escape(Path(r['series']).name)}: {escape(r['error'])}")


def _print_evaluation(result: dict) -> None:
    """The evaluation as rich tables: per case, then the summary with its 95 % CIs."""
    def f(v) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    if result["task"] == "segmentation":
        table = Table("case", "label", "Dice", "HD95 mm", "MSD mm", "volume mL", "ref mL", "vol diff %",
                      title=result["model"])
        for r in result["cases"]:
            for name, mt in r.get("metrics", {}).items():
                table.add_row(escape(Path(r["series"]).name), name, f(mt["dice"]), f(mt["hd95_mm"]), f(mt["msd_mm"]),
                              f(mt["volume_ml"]), f(mt["reference_ml"]), f(mt["volume_difference_pct"]))
        console.print(table)
        summ = Table("label", "metric", "n", "mean", "95 % CI", "min", "max", title="summary")
        for name, metrics in result["summary"].items():
            for metric, s in metrics.items():
                ci = s.get("ci95")
                summ.add_row(name, metric, str(s["n"]), f(s.get("mean")), "-" if not ci else f"{ci[0]:.3f} - {ci[1]:.3f}",
                             f(s.get("min")), f(s.get("max")))
        console.print(summ)
    else:
        table = Table("case", "reference", "predicted", "probabilities", title=result["model"])
        for r in result["cases"]:
            if "error" not in r:
                table.add_row(escape(Path(r["series"]).name), r["reference"], r["predicted"], str(r["probabilities"]))
        console.print(table)
        s = result["summary"]
        if s:
            console.print(f"accuracy {f(s['accuracy'])}, 95 % CI {s['accuracy_ci95']}")
            summ = Table("class", "cases", "sensitivity", "specificity", "precision", "F1", "ROC AUC")
            for name, c in s["per_class"].items():
                summ.add_row(name, str(c["cases"]), f(c["sensitivity"]), f(c["specificity"]), f(c["precision"]),
                             f(c["f1"]), f(c["roc_auc"]))
            console.print(summ)
            console.print(f"confusion matrix (rows: reference, columns: predicted): {s['confusion_matrix']}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

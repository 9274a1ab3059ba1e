"""``dicom-ai models test``, ``export``, ``train`` and ``evaluate``: the commands that run a
model's network, on the ``models`` group of :mod:`dicom_ai.cli.models`.

Exit status 1 when a series, reference, dataset or export is not usable (the reason on standard
error), 2 for an unknown training task or design or a series without its reference.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, cast

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from dicom_ai.cache.store import FileStore
from dicom_ai.cli.common import ConfigOpt, UserOpt, console, err, registry_of
from dicom_ai.cli.models import app, package_of
from dicom_ai.config import Settings
from dicom_ai.logconf import setup_logging
from dicom_ai.package.manifest import load_manifest

if TYPE_CHECKING:
    from sqlalchemy.orm import sessionmaker

    from dicom_ai.infer.runtime import ClassResult


@app.command("test")
def models_test(
    model: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or a package folder.")],
    series: Annotated[str, typer.Argument(help="DICOM series folder or file list, or a Series Instance UID in the cache.")],
    reference: Annotated[Optional[Path], typer.Option(help="Reference segmentation: DICOM SEG, RTSTRUCT or NIfTI.")] = None,
    mapping: Annotated[list[str], typer.Option("--map", help="Reference segment/ROI/value to label: "
                                                "'GTV=1', '10,11=Left lung'. Repeatable.")] = [],  # noqa: B006 - typer passes the parsed list
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda (default: CUDA if any).")] = None,
    user: UserOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run a model on a series; print timings and the result, and with --reference the Dice per label."""
    import numpy as np  # deferred: start-up time

    from dicom_ai.infer.runtime import load_model  # deferred: start-up time
    from dicom_ai.infer.runtimes import configure_threads  # deferred: start-up time
    from dicom_ai.infer.volume import load_series  # deferred: start-up time
    from dicom_ai.models.registry import current_user, record  # deferred: start-up time

    configure_threads()  # inference in this process, as in the worker's
    settings, sessions = registry_of(config)
    package = package_of(settings, sessions, model)
    files = _series_files(settings, sessions, series)
    timings: dict[str, float] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err) as progress:
        step = progress.add_task(f"read {len(files)} files", total=4 if reference else 3)
        t = time.perf_counter()
        volume = load_series(files)
        timings["read series"] = time.perf_counter() - t
        progress.update(step, advance=1, description="load the model")
        loaded = load_model(package, device=device, reduced_precision=settings.worker.reduced_precision)
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
            from dicom_ai.evaluate.reference import (  # deferred: start-up time
                dice_scores,
                parse_mapping,
                read_reference,
            )

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
            dice = dice_scores(cast("np.ndarray", output), ref, loaded.manifest.labels)
            progress.update(step, advance=1)
    m = loaded.manifest
    console.print(f"[bold]{m.label}[/bold] on {volume.shape[0]} × {volume.shape[1]} × {volume.shape[2]} voxels "
                  f"({', '.join(f'{v:.2f}' for v in volume.spacing)} mm), device {loaded.device}, {loaded.precision}")
    times = Table("step", "s")
    for key, value in timings.items():
        times.add_row(key, f"{value:.3f}")
    times.add_row("[bold]inference total[/bold]", f"{sum(v for k, v in run.items()):.3f}")
    console.print(times)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    summary: list[str] = []
    if m.task == "segmentation":
        output = cast("np.ndarray", output)  # the task decides what predict() returns
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
        output = cast("ClassResult", output)
        table = Table("class", "probability")
        for c, p in zip(output.classes, output.probabilities, strict=False):
            table.add_row(("[bold]" + c.name + "[/bold]") if c is output.top else c.name, f"{p:.4f}")
        console.print(table)
        summary.append(f"{output.top.name} {output.probability:.3f}" + (" (attention)" if output.attention else ""))
    with sessions.begin() as s:
        record(s, user or current_user(), "test", m.name, m.version,
               f"on {series} ({volume.shape[0]} slices): inference {sum(run.values()):.2f} s"
               + (f"; {'; '.join(summary)}" if summary else ""))


def _cache_lookup(settings: Settings, sessions: sessionmaker) -> Callable[[str], list[Path]]:
    """Series Instance UID -> its cached files, absolute paths in instance order (for
    :mod:`dicom_ai.evaluate.series`); no files when the cache has no such series."""

    def lookup(uid: str) -> list[Path]:
        from dicom_ai.cache import queries  # deferred: start-up time

        store = FileStore(settings.node.data_dir)
        with sessions() as s:
            row = queries.series_by_uid(s, uid)
            return [store.abspath(i.path) for i in row.instances] if row is not None else []

    return lookup


def _series_files(settings: Settings, sessions: sessionmaker, series: str) -> list[Path]:
    """The files of ``series`` (a folder, a file list or a Series Instance UID in the cache);
    exit status 1 when there are none."""
    from dicom_ai.evaluate.series import series_files  # deferred: start-up time

    try:
        return series_files(series, _cache_lookup(settings, sessions))
    except FileNotFoundError as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None


@app.command("export")
def models_export(
    package: Annotated[Path, typer.Argument(help="Package folder (runtime monai or torchscript).")],
    output: Annotated[Path, typer.Argument(help="New package folder to write.")],
    runtime: Annotated[str, typer.Option(help="torchscript or onnx.")] = "torchscript",
    version: Annotated[Optional[str], typer.Option(help="Version of the new package (default: the same).")] = None,
    config: ConfigOpt = None,  # accepted like every command's; the export reads no settings
) -> None:
    """Write a package's model as TorchScript or ONNX (a new package, same manifest otherwise);
    `dicom-ai models add` it next."""
    from dicom_ai.models.convert import convert_package  # deferred: start-up time

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
        self.tasks: dict[str, TaskID] = {}

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


@app.command("train")
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
    setup_logging()
    with _LossBar() as bar:
        if dataset is not None:
            from dicom_ai.train.dataset import DatasetError, train_on_dataset  # deferred: start-up time

            settings, sessions = registry_of(config)
            base_dir = package_of(settings, sessions, base) if base else None
            try:
                result = train_on_dataset(dataset, output_dir, base=base_dir, folds=folds, device=device,
                                          iterations=iterations or 1000, version=version, name=name, seed=seed,
                                          max_minutes=max_minutes, lookup=_cache_lookup(settings, sessions),
                                          progress=bar.update, report=bar.report)
            except DatasetError as exc:
                err.print(f"[red]not trained:[/red] {escape(str(exc))}")
                raise typer.Exit(1) from None
        elif task == "lung":
            from dicom_ai.train.lung import DESIGNS, crossvalidate, train_lung  # deferred: start-up time

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
            from dicom_ai.train.region import crossvalidate_region, train_region_model  # deferred: start-up time

            cv = crossvalidate_region(cv_dir, data_root=data_root, seed=seed) if cv_dir else None
            result = train_region_model(output_dir, data_root=data_root, seed=seed,
                                        iterations=iterations or 1000, max_minutes=max_minutes, crossvalidation=cv,
                                        version=version or "1.0.0")
        else:
            err.print(f"[red]unknown task {task!r}:[/red] 'lung' or 'region'")
            raise typer.Exit(2)
    console.print_json(json.dumps(result, default=str))


@app.command("evaluate")
def models_evaluate(
    model: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or a package folder.")],
    target: Annotated[str, typer.Argument(help="A dataset file (.toml or .csv), or one series (folder, NIfTI CT, "
                                               "Series Instance UID) with --reference or --class.")],
    reference: Annotated[Optional[Path], typer.Option(help="One series: its SEG, RTSTRUCT or NIfTI reference.")] = None,
    mapping: Annotated[list[str], typer.Option("--map", help="One series: reference name to label, e.g. "
                                                             "'Lung_L=Left lung'. Repeatable.")] = [],  # noqa: B006 - typer passes the parsed list
    klass: Annotated[Optional[str], typer.Option("--class", help="One series: its reference class.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder for evaluation.json, evaluation.md and the overlay "
                                                     "PNGs (default: evaluation-<model>-<version>).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: CUDA if any).")] = None,
    reduced_precision: Annotated[Optional[bool], typer.Option(
        "--reduced-precision/--float32",
        help="Network in the package's validated reduced precision where the device has it, or float32 "
             "(default: as [worker] reduced_precision).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Score a model on a dataset: Dice, HD95, mean surface distance and volume difference per
    label and case (segmentation), or accuracy, sensitivity, specificity, precision, F1, ROC AUC
    and the confusion matrix (classification), with bootstrap 95 % CIs."""
    from dicom_ai.evaluate.run import evaluate_cases, write_report  # deferred: start-up time
    from dicom_ai.infer.runtimes import configure_threads  # deferred: start-up time
    from dicom_ai.train.dataset import DatasetCase, DatasetError, load_dataset  # deferred: start-up time

    configure_threads()  # inference in this process, as in the worker's
    settings, sessions = registry_of(config)
    package = package_of(settings, sessions, model)
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
                                overlays=out / "overlays", progress=step,
                                reduced_precision=settings.worker.reduced_precision if reduced_precision is None
                                else reduced_precision)
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
                      title=f"{result['model']} ({result['precision']})")
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
        table = Table("case", "reference", "predicted", "probabilities", title=f"{result['model']} ({result['precision']})")
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

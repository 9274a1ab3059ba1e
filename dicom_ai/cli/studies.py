"""``dicom-ai studies``: the studies in the cache."""

from __future__ import annotations

import typer
from rich.table import Table

from dicom_ai.cli.common import ConfigOpt, console, index_of

app = typer.Typer(help="Studies in the cache.", no_args_is_help=True)


@app.command("list")
def studies_list(config: ConfigOpt = None) -> None:
    """List studies with their series and instance counts."""
    from dicom_ai.cache import queries  # deferred: start-up time

    _, sessions = index_of(config)
    table = Table("patient", "study date", "study UID", "series", "instances", "series states")
    with sessions() as s:
        for st in queries.studies(s):
            table.add_row(st.patient.patient_id, st.study_date, st.study_instance_uid, str(len(st.series)),
                          str(sum(len(se.instances) for se in st.series)),
                          ", ".join(sorted({se.state for se in st.series})))
    console.print(table)

"""Copying a whole index to another database (SQLite to PostgreSQL, for a site that grows).

Every table of the schema is copied row for row with its keys, parents before children, into a
target that holds no rows yet; the target is first brought to this version's schema by the same
migrations as any index. Afterwards the target's key sequences (PostgreSQL) continue after the
copied keys, and the row counts of source and target are compared. The node must be stopped
while it runs: rows written to the source meanwhile would not be copied.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, func, insert, select, text

from dicom_ai.cache.db import Base, make_engine, migrate

#: Rows read and written per statement.
BATCH = 5000


class IndexNotEmpty(RuntimeError):
    """The target database already holds index rows: copying into it would mix two indexes."""


class CopyMismatch(RuntimeError):
    """After the copy, a table of the target does not hold as many rows as the source's."""


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows per table of the index schema (tables the database lacks count 0)."""
    from sqlalchemy import inspect

    present = set(inspect(engine).get_table_names())
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            n = conn.scalar(select(func.count()).select_from(table)) if table.name in present else 0
            counts[table.name] = int(n or 0)
    return counts


def copy_index(source_url: str, target_url: str,
               progress: Callable[[str, int, int], None] | None = None) -> dict[str, int]:
    """Copy the index at ``source_url`` into the empty database at ``target_url``.

    Both are migrated to this version's schema first. ``progress(table, copied, total)`` is
    called after each batch. Returns the rows copied per table.

    Raises
    ------
    IndexNotEmpty
        If any index table of the target already holds rows (nothing is written then).
    CopyMismatch
        If the counts differ afterwards.
    dicom_ai.cache.db.IndexSchemaError
        If either database cannot be brought to this version's schema.
    """
    source, target = make_engine(source_url), make_engine(target_url)
    try:
        migrate(source)
        migrate(target)
        filled = {name: n for name, n in row_counts(target).items() if n}
        if filled:
            raise IndexNotEmpty(f"the target already holds index rows ({', '.join(f'{k}: {v}' for k, v in filled.items())})")
        totals = row_counts(source)
        with source.connect() as read, target.begin() as write:  # one transaction: all or nothing
            for table in Base.metadata.sorted_tables:  # parents before children
                done = 0
                order = list(table.primary_key.columns)
                rows = read.execution_options(yield_per=BATCH).execute(select(table).order_by(*order))
                for part in rows.mappings().partitions(BATCH):
                    write.execute(insert(table), [dict(r) for r in part])
                    done += len(part)
                    if progress is not None:
                        progress(table.name, done, totals[table.name])
            if write.dialect.name == "postgresql":
                _continue_sequences(write)
        copied = row_counts(target)
        if copied != totals:
            raise CopyMismatch(f"rows per table differ after the copy: source {totals}, target {copied}")
        return copied
    finally:
        source.dispose()
        target.dispose()


def _continue_sequences(conn: Connection) -> None:
    """Set each table's key sequence past the copied keys (rows inserted with their keys do not
    advance it)."""
    for table in Base.metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        if len(keys) != 1 or keys[0].name != "id":
            continue  # a text key (counters) has no sequence
        conn.execute(text(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'),"
            f" COALESCE((SELECT max(id) FROM {table.name}), 1),"
            f" (SELECT max(id) FROM {table.name}) IS NOT NULL)"))

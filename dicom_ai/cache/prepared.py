"""SQLAlchemy Core statements compiled once and run on the database driver's cursor.

Every C-STORE runs the same few index statements (look up the series and the SOP Instance UID,
insert the instance row, touch the series, count). ``Connection.execute`` spends about 60 us
of interpreter time per statement around the driver's own call (the compiled-cache look-up,
the execution context, the result object), four times what SQLite takes to run it, and it
holds the interpreter lock all that time. A :class:`Prepared` statement is compiled by
SQLAlchemy for the connection's dialect once, and then executed on that connection's DBAPI
cursor (PEP 249), inside the SQLAlchemy transaction the caller opened, so it commits or rolls
back with the rest.

SQLAlchemy still writes the SQL and converts the parameters (each bind parameter's
``bind_processor`` for the dialect, as ``Connection.execute`` would). Result rows are returned
as the driver gives them, so a statement may only select columns whose type needs no result
conversion on the dialect (e.g. ``Integer`` and ``String``); :class:`Prepared` checks that when
it compiles, and raises ``TypeError`` otherwise.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.sql.compiler import SQLCompiler


class _Compiled:
    """One statement compiled for one dialect: its SQL, how to build its parameters, and the
    row type of its result (None for a statement that returns no rows)."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)  # a Core statement, not DDL
        self.sql = str(compiled)
        self.positional = bool(dialect.positional)
        self.names: list[str] = list(compiled.positiontup or []) if self.positional else list(compiled.binds)
        # values fixed when the statement was built (literals such as a state to compare with)
        self.fixed = {name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required}
        self.processors: dict[str, Any] = {}
        for name in self.names:
            impl = compiled.binds[name].type.dialect_impl(dialect)
            processor = impl.bind_processor(dialect)
            if processor is not None:
                self.processors[name] = processor
        self.row: Any = None
        columns = statement.selected_columns if isinstance(statement, Select) else compiled.returning
        if columns:
            keys: list[str] = []
            for column in columns:
                impl = column.type.dialect_impl(dialect)
                if impl.result_processor(dialect, None) is not None:
                    raise TypeError(f"column {column.key} of type {column.type} needs a result conversion "
                                    f"on {dialect.name}; run this statement with Connection.execute")
                keys.append(str(column.key))
            self.row = namedtuple("Row", keys, rename=True)  # type: ignore[misc]  # fields known at run time

    def parameters(self, values: dict[str, Any]) -> Any:
        merged = {**self.fixed, **values}
        converted = {name: (self.processors[name](merged[name]) if name in self.processors else merged[name])
                     for name in self.names}
        return [converted[name] for name in self.names] if self.positional else converted


class Prepared:
    """A SQLAlchemy Core statement run on the DBAPI cursor of a :class:`Connection` (see the
    module docstring). Bind parameters are given by name, as to ``Connection.execute``; a
    required one that is missing raises ``KeyError``."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: WeakKeyDictionary[Dialect, _Compiled] = WeakKeyDictionary()
        self._lock = threading.Lock()

    def _for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.setdefault(dialect, _Compiled(self.statement, dialect))
        return compiled

    def _run(self, conn: Connection, values: dict[str, Any]) -> tuple[_Compiled, Any]:
        """Execute on ``conn``'s DBAPI cursor; a driver error is raised as SQLAlchemy raises it
        (e.g. :class:`sqlalchemy.exc.IntegrityError`), and a lost connection is invalidated."""
        dialect = conn.dialect
        compiled = self._for(dialect)
        parameters = compiled.parameters(values)
        dbapi_connection = conn.connection.dbapi_connection
        assert dbapi_connection is not None  # an open connection has one
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.sql, parameters)
        except BaseException as exc:
            cursor.close()
            error = dialect.loaded_dbapi.Error
            if not isinstance(exc, error):
                raise
            disconnected = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if disconnected:
                conn.invalidate(exc)
            raise DBAPIError.instance(compiled.sql, parameters, exc, error,
                                      connection_invalidated=disconnected, dialect=dialect) from exc
        return compiled, cursor

    def execute(self, conn: Connection, values: dict[str, Any]) -> int:
        """Run a statement that returns no rows; the number of rows it changed."""
        compiled, cursor = self._run(conn, values)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def first(self, conn: Connection, values: dict[str, Any]) -> Any:
        """Run a SELECT (or a statement with RETURNING); its first row as a named tuple of the
        selected columns, or None."""
        compiled, cursor = self._run(conn, values)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else compiled.row(*row)

"""A throw-away PostgreSQL server for the tests: Debian's ``postgresql`` binaries, ``initdb`` on a
temporary folder, ``postgres`` listening on 127.0.0.1 at a free port, removed when stopped.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
``postgres`` system user that Debian's package creates, on a folder it owns.
"""

from __future__ import annotations

import ctypes  # noqa: F401  (imported before the fork: the child, as postgres, cannot read the venv)
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import peers

USER = "dicomai"  # the database role the tests connect as (trust authentication, loopback only)


def bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``postgres``, or None."""
    found = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")
             if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "postgres", os.X_OK)]
    return max(found, key=lambda d: float(d.parent.name), default=None)


class PostgresServer:
    """One PostgreSQL cluster; :meth:`database` gives a fresh empty database's SQLAlchemy URL."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: the server's default fsync and commit settings (for measurements);
        otherwise they are off, since the tests throw the server away."""
        self.durable = durable
        found = bin_dir()
        if found is None:
            raise FileNotFoundError("PostgreSQL not found (Debian package postgresql)")
        self.bin = found
        self.port = peers.free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dicom-ai-pg-"))
        self.data = self.root / "data"
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse root
            self._owner = pwd.getpwnam("postgres")
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        self._proc: subprocess.Popen | None = None
        self._names = itertools.count(1)
        self._template = ""

    def _as_owner(self) -> dict:
        """subprocess arguments: run as ``postgres`` when root, and die with the test run (the
        parent-death signal is set after the change of user, which would clear it)."""
        ids = {} if self._owner is None else {"user": self._owner.pw_uid, "group": self._owner.pw_gid,
                                               "extra_groups": []}
        return {**ids, "preexec_fn": peers._die_with_parent, "cwd": self.root}

    def start(self) -> PostgresServer:
        log = self.root / "initdb.log"
        with log.open("wb") as out:
            done = subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                                   "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"],
                                  stdout=out, stderr=subprocess.STDOUT, timeout=120, **self._as_owner())
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{log.read_text()}")
        self._launch()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_tail()}")
            try:
                psycopg.connect(self.dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready after {timeout} s:\n{self.log_tail()}") from None
                time.sleep(0.2)

    def dsn(self, database: str) -> str:
        """libpq connection string for ``database``."""
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={database}"

    def url(self, database: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``database``."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self, prefix: str = "t") -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}{next(self._names)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def migrated_database(self) -> str:
        """A fresh database already at the newest index schema (a copy of one migrated once
        per server: running the migrations for every test would take seconds each)."""
        import psycopg
        from sqlalchemy import create_engine

        from dicom_ai.cache.db import migrate

        if not self._template:
            url = self.database("schema_head_")
            engine = create_engine(url)
            migrate(engine)
            engine.dispose()  # a template must have no connections when it is copied
            self._template = url.rsplit("/", 1)[1]
        name = f"t{next(self._names)}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
        return self.url(name)

    def log_tail(self, n: int = 30) -> str:
        path = self.root / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def _launch(self) -> None:
        # durability is not under test in the tests: the server is thrown away with its folder
        fast = [] if self.durable else ["-c", "fsync=off", "-c", "synchronous_commit=off",
                                        "-c", "full_page_writes=off"]
        self._proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             *fast, "-c", "max_connections=300"],
            stdout=(self.root / "server.log").open("ab"), stderr=subprocess.STDOUT, **self._as_owner())
        self._wait_ready()

    def _shutdown(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown: clients are cut off
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def restart(self) -> None:
        """Stop the server (its clients lose their connections) and start it again, same data
        and port."""
        self._shutdown()
        self._launch()

    def stop(self) -> None:
        self._shutdown()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

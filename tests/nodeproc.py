"""``dicom-ai serve`` as a real subprocess for integration tests (loopback, temporary folders)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import peers


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a small TOML file from ``{section: {key: value}}`` / ``{section: [{...}]}``."""
    lines: list[str] = []
    for section, body in config.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in body.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class NodeProcess:
    """Start ``dicom-ai serve --config`` and stop it with SIGTERM; log kept in ``workdir``."""

    def __init__(self, workdir: Path, *, destinations: list[dict] | None = None,
                 stable_seconds: float = 2.0, peers_: list[dict] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = peers.free_port()
        self.ae_title = "DICOM_AI"
        self.web_port = peers.free_port()
        config: dict[str, Any] = {
            # one receiver process (the node's own): a second one costs every test a start-up of
            # its own; the tests of several receiver processes ask for them
            "node": {"ae_title": self.ae_title, "port": self.port, "bind_address": "127.0.0.1",
                     "data_dir": str(self.workdir / "var"), "receivers": 1},
            "peers": peers_ if peers_ is not None else [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
            "completion": {"stable_seconds": stable_seconds, "check_interval_seconds": 0.5},
            "delivery": {"retry_initial_seconds": 1, "retry_max_seconds": 2},
            # models load at their first job: most tests never run one, and the preload (weights,
            # torch, the result encoder's tables) would compete with the receivers for the CPU
            # (and reading a series ahead of its job, tests/worker/test_read_ahead.py, would too)
            "worker": {"poll_seconds": 0.5, "preload_models": False, "read_ahead": False},
            "web": {"port": self.web_port, "refresh_seconds": 0},
        }
        if destinations:
            config["destinations"] = destinations
        for section, value in (extra or {}).items():  # tables merge, lists replace
            if isinstance(value, dict) and isinstance(config.get(section), dict):
                config[section] = {**config[section], **value}
            else:
                config[section] = value
        self.config = config
        self.database_url = config["node"].get("database_url") or f"sqlite:///{self.workdir / 'var' / 'index.sqlite'}"
        self.config_path = write_config(self.workdir / "dicom-ai.toml", config)
        self.log_path = self.workdir / "node.log"
        self.proc: subprocess.Popen | None = None

    def cli(self, *args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``dicom-ai ARGS --config <this node's config>`` (``input`` on its standard input)."""
        return subprocess.run(
            [sys.executable, "-m", "dicom_ai.cli", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout, check=False, input=input,
        )

    def start(self, timeout: float = 60.0, ready=None) -> NodeProcess:
        """Start and wait until ``ready()`` (default: a C-ECHO from STORESCU succeeds)."""
        log = open(self.log_path, "ab")
        env = dict(os.environ, COLUMNS="200")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_ai.cli", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dicom-ai serve exited {self.proc.returncode}:\n{self.log_tail()}")
            if ready is not None:
                if ready():
                    return self
            elif peers.echoscu("127.0.0.1", self.port, aec=self.ae_title, aet="STORESCU").returncode == 0:
                return self
            time.sleep(0.3)
        raise RuntimeError(f"dicom-ai serve did not answer C-ECHO in {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the node and its worker (the whole process group), as a crash would."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def rows(self, model: Any) -> list[Any]:
        """Every row of an index table (an ORM class), detached, in primary key order."""
        from sqlalchemy import select

        from dicom_ai.cache.db import open_index

        sessions = open_index(self.database_url)
        try:
            with sessions() as s:
                rows = s.scalars(select(model).order_by(*model.__table__.primary_key.columns)).all()
                s.expunge_all()
                return list(rows)
        finally:
            sessions.kw["bind"].dispose()

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return True
            time.sleep(0.5)
        return False


class WorkerProcess:
    """``dicom-ai worker --config`` (executor "celery") with the node's configuration and its own
    ``[worker]`` table; SIGTERM to stop, SIGKILL to crash; log kept in ``workdir``."""

    def __init__(self, node: NodeProcess, workdir: Path, worker: dict[str, Any]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {**node.config, "worker": {**node.config.get("worker", {}), **worker}}
        self.config_path = write_config(self.workdir / "dicom-ai.toml", config)
        self.log_path = self.workdir / "worker.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_ai.cli", "worker", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, COLUMNS="200"), start_new_session=True,
            preexec_fn=peers._die_with_parent)
        return self

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:]) if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

"""Real DICOM peers for integration tests: Orthanc, DCMTK tools and dciodvfy.

A plain module (no pytest imports) so that benchmarks and scripts can use it too; the pytest
fixtures built on it live in ``tests/conftest.py``.

Everything talks to 127.0.0.1 on free ports. DCMTK-based processes (``storescu``, ``echoscu``,
Orthanc) get ``TCP_NODELAY=1`` in their environment: Debian's DCMTK leaves Nagle's algorithm on
otherwise and stalls ~45 ms per message.

Note: pynetdicom installs console scripts named ``storescu``, ``echoscu`` and ``storescp`` that
may shadow DCMTK's on ``PATH``. :func:`dcmtk_tool` finds the DCMTK binary (or the one in
``$DCMTK_BIN_DIR``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

REPO_ROOT: Path = Path(__file__).resolve().parent.parent
SHARED_DATA: Path = REPO_ROOT.parent / "shared" / "data"
LIDC_SERIES: Path = SHARED_DATA / "ct_chest_LIDC-IDRI-0314" / "image"
TOTALSEG_SERIES: Path = SHARED_DATA / "totalsegmentator_examples" / "example_ct_dicom"

#: Ports a system-wide Orthanc (Debian package) or a PACS commonly holds; never handed out.
_RESERVED_PORTS = frozenset({104, 4242, 8042, 11112})

#: storescu flags that make it propose a compressed transfer syntax (plus the uncompressed ones).
PROPOSE = {
    "j2k": "-xv",  # JPEG 2000 lossless
    "jpeg-lossless": "-xs",  # JPEG lossless SV1
    "jpegls": "-xt",  # JPEG-LS lossless
    "rle": "-xr",
    "deflate": "-xd",
}


def free_port() -> int:
    """Return a TCP port that is free on all interfaces right now.

    Binds to the wildcard address (Orthanc listens on all interfaces) and lets the kernel pick;
    a small race with other processes remains, as with any such helper.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        if port not in _RESERVED_PORTS:
            return port


def tcp_nodelay_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of ``os.environ`` with ``TCP_NODELAY=1`` (and ``extra``) set."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


def _is_dcmtk(path: str) -> bool:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "dcmtk" in (out.stdout + out.stderr).lower()


@lru_cache(maxsize=None)
def dcmtk_tool(name: str) -> str | None:
    """Return the path of DCMTK's ``name`` (e.g. ``storescu``), or None if not installed.

    Looks in ``$DCMTK_BIN_DIR`` first, then every ``PATH`` entry, skipping same-named programs
    that are not DCMTK (pynetdicom's console scripts).
    """
    dirs: list[str] = []
    if os.environ.get("DCMTK_BIN_DIR"):
        dirs.append(os.environ["DCMTK_BIN_DIR"])
    dirs += os.environ.get("PATH", "").split(os.pathsep)
    dirs += ["/usr/bin", "/usr/local/bin"]
    seen: set[str] = set()
    for d in dirs:
        cand = os.path.join(d, name)
        real = os.path.realpath(cand)
        if real in seen or not (os.path.isfile(cand) and os.access(cand, os.X_OK)):
            continue
        seen.add(real)
        if _is_dcmtk(cand):
            return cand
    return None


def orthanc_binary() -> str | None:
    """Return the path of the ``Orthanc`` executable, or None."""
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None
    )


def dciodvfy_binary() -> str | None:
    """Return the path of dicom3tools' ``dciodvfy``, or None."""
    return shutil.which("dciodvfy")


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGTERM the child when the thread that started it dies.

    A test run that is killed (Ctrl-C twice, CI timeout) then leaves no Orthanc behind. Start
    peers from a thread that lives as long as they should (the main thread in pytest).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _require(path: str | None, name: str) -> str:
    if path is None:
        raise FileNotFoundError(f"{name} not found (install DCMTK / orthanc / dicom3tools)")
    return path


# --------------------------------------------------------------------------------------------
# DCMTK command-line tools
# --------------------------------------------------------------------------------------------


def leftover_temporaries(root: Path) -> list[Path]:
    """The store's temporary files (``.tmp-*``) under ``root``, less the unused spares a running
    receiver keeps (:func:`dicom_ai.cache.store.unused_spare`): what a refused, failed or cut
    write left behind."""
    from dicom_ai.cache.store import TMP_PREFIX, unused_spare

    return [p for p in Path(root).rglob(TMP_PREFIX + "*") if not unused_spare(p)]


def wait_for(check: Any, timeout: float, what: str, log: Any = None, interval: float = 0.5) -> Any:
    """Call ``check()`` until it returns something true and return that; AssertionError naming
    ``what`` (and ``log()``, if given) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"{what} not seen after {timeout} s" + (f"; log:\n{log()}" if log else ""))


def copy_series(src: Path, dest: Path, **attrs: Any) -> list[Path]:
    """The files of the series in ``src``, written to ``dest`` with fresh Study, Series and SOP
    Instance UIDs and the data element keywords in ``attrs`` set."""
    import pydicom
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for f in sorted(Path(src).iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        ds.save_as(dest / f.name)
        out.append(dest / f.name)
    return out


def storescu(
    host: str,
    port: int,
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    aec: str,
    aet: str = "STORESCU",
    propose: str | None = None,
    required_only: bool = False,
    extra_args: Sequence[str] = (),
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Send files and folders with DCMTK ``storescu``; return the finished process.

    Folders are scanned recursively (``+sd +r``). ``propose`` is a key of :data:`PROPOSE`
    (``"j2k"``, ``"jpeg-lossless"``, ``"jpegls"``, ...): DCMTK proposes uncompressed syntaxes only
    unless told. ``required_only`` adds ``-R`` (propose only the files' SOP classes, needed for SEG
    and SR). DCMTK 3.6.7 cannot decompress JPEG-LS or JPEG 2000 files on the fly, so such files
    are sent only with the matching ``propose`` (and only to a peer that accepts that syntax).
    Does not raise on a failed send: check ``returncode`` and ``stdout``/``stderr``.
    """
    exe = _require(dcmtk_tool("storescu"), "DCMTK storescu")
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    args: list[str] = [exe, "-aec", aec, "-aet", aet]
    if any(Path(p).is_dir() for p in items):
        args += ["+sd", "+r"]
    if propose is not None:
        args.append(PROPOSE[propose])
    if required_only:
        args.append("-R")
    args += list(extra_args)
    args += [host, str(port)]
    args += [os.fspath(p) for p in items]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=tcp_nodelay_env(), check=False
    )


def cstore_file(port: int, path: str | os.PathLike[str], transfer_syntax: str | None = None, *,
                aec: str = "DICOM_AI", aet: str = "STORESCU", timeout: float = 60.0) -> int | None:
    """C-STORE the file at ``path`` to 127.0.0.1:``port`` as it is, with pynetdicom: its data
    set is streamed as stored (never decoded or re-encoded here), in ``transfer_syntax``
    (default: the file's). Returns the response's status, or None without a response."""
    import pydicom
    from pynetdicom import AE

    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae = AE(ae_title=aet)
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = timeout
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [transfer_syntax or meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title=aec)
    assert assoc.is_established, f"association to port {port} not established"
    try:
        status = assoc.send_c_store(path)
        return int(status.Status) if status else None
    finally:
        assoc.release()


def echoscu(
    host: str, port: int, *, aec: str, aet: str = "ECHOSCU", timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """C-ECHO ``aec`` at ``host:port`` with DCMTK ``echoscu``; ``returncode == 0`` on success."""
    exe = _require(dcmtk_tool("echoscu"), "DCMTK echoscu")
    return subprocess.run(
        [exe, "-aec", aec, "-aet", aet, host, str(port)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=tcp_nodelay_env(),
        check=False,
    )


# --------------------------------------------------------------------------------------------
# dciodvfy
# --------------------------------------------------------------------------------------------


def dciodvfy(path: str | os.PathLike[str], timeout: float = 120.0) -> tuple[list[str], list[str]]:
    """Validate one file with dicom3tools ``dciodvfy``; return ``(errors, warnings)``.

    Each item is the message without its ``Error - `` / ``Warning - `` prefix. dciodvfy writes its
    findings to stderr and exits non-zero whenever there is an error, so the exit status is not
    used.
    """
    exe = _require(dciodvfy_binary(), "dciodvfy (dicom3tools)")
    out = subprocess.run(
        [exe, os.fspath(path)], capture_output=True, text=True, errors="replace",
        timeout=timeout, check=False,
    )
    errors: list[str] = []
    warnings: list[str] = []
    for line in (out.stderr + "\n" + out.stdout).splitlines():
        line = line.strip()
        if line.startswith("Error - "):
            errors.append(line[len("Error - "):])
        elif line.startswith("Warning - "):
            warnings.append(line[len("Warning - "):])
    return errors, warnings


# --------------------------------------------------------------------------------------------
# Test data helpers
# --------------------------------------------------------------------------------------------


def restore_totalseg_series(
    dest_dir: str | os.PathLike[str], source: str | os.PathLike[str] = TOTALSEG_SERIES
) -> list[Path]:
    """Copy the TotalSegmentator JPEG 2000 series to ``dest_dir`` with its UIDs restored.

    Its data sets carry empty SOP Class UID and SOP Instance UID (blanked by de-identification);
    the file meta information still has them, so they are copied back. Study Instance UID and
    Series Instance UID are empty too and exist nowhere in the files: they are derived
    deterministically from the Frame of Reference UID (the same on every run), so Orthanc and
    other receivers accept the instances as one series. The pixel data are written back
    unchanged (still JPEG 2000 lossless). Returns the written paths, sorted.
    """
    import pydicom  # local import: the rest of this module needs only the standard library
    from pydicom.uid import generate_uid

    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for src in sorted(Path(source).iterdir()):
        if not src.is_file():
            continue
        ds = pydicom.dcmread(src)
        meta = ds.file_meta
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        seed = str(ds.get("FrameOfReferenceUID", "")) or "totalsegmentator-example"
        if not ds.get("StudyInstanceUID"):
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
        if not ds.get("SeriesInstanceUID"):
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
        out = dest / (src.name if src.suffix == ".dcm" else src.name + ".dcm")
        ds.save_as(out, enforce_file_format=True)
        written.append(out)
    return written


# --------------------------------------------------------------------------------------------
# Orthanc
# --------------------------------------------------------------------------------------------


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed."""


class Orthanc:
    """A private Orthanc on free ports with a temporary config and storage, as a context manager.

    Parameters
    ----------
    aet:
        Orthanc's own AE title (``DicomAet``).
    modalities:
        ``DicomModalities``: name -> (AE title, host, port).
    workdir:
        Folder for config, storage, index and ``orthanc.log``; a new temporary folder (removed
        on exit) when None.
    config:
        Extra configuration keys, overriding the defaults (e.g. ``{"StableAge": 2}``).
    startup_timeout:
        Seconds to wait for ``GET /system`` to answer.

    Examples
    --------
    >>> with Orthanc() as pacs:                                       # doctest: +SKIP
    ...     storescu("127.0.0.1", pacs.dicom_port, folder, aec=pacs.aet)
    ...     pacs.find("Instance", {"SeriesInstanceUID": uid})
    """

    def __init__(
        self,
        aet: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        *,
        workdir: str | os.PathLike[str] | None = None,
        config: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
        http_timeout: float = 60.0,
    ) -> None:
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.extra_config = dict(config or {})
        self.startup_timeout = startup_timeout
        self.http_timeout = http_timeout
        self._given_workdir = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = None
        self.http_port = 0
        self.dicom_port = 0
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen[bytes] | None = None
        self._own_tmp = False

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        """Orthanc's log file."""
        assert self.workdir is not None
        return self.workdir / "orthanc.log"

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of Orthanc's log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except (OSError, AssertionError):
            return "(no log)"
        return "\n".join(lines[-n:])

    def _config(self) -> dict[str, Any]:
        assert self.workdir is not None
        cfg: dict[str, Any] = {
            "Name": f"dicom-ai-test-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
            "DicomModalitiesInDatabase": False,
            "UnknownSopClassAccepted": True,
            "DicomScuTimeout": 30,
            "DicomScpTimeout": 30,
            "SaveJobs": False,
            "StableAge": 60,
            "OverwriteInstances": True,
            "HttpTimeout": 60,
            "KeepAlive": True,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self) -> Orthanc:
        """Write the config, start Orthanc and wait until ``GET /system`` answers."""
        _require(orthanc_binary(), "Orthanc")
        if self._given_workdir is not None:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-"))
            self._own_tmp = True
        last_error = ""
        for _attempt in range(3):  # a port taken between free_port() and bind: try new ports
            self.http_port = free_port()
            self.dicom_port = free_port()
            while self.dicom_port == self.http_port:
                self.dicom_port = free_port()
            try:
                self._launch()
                return self
            except OrthancError as exc:
                last_error = str(exc)
                self._terminate()
        self._cleanup()
        raise OrthancError(last_error)

    def _launch(self) -> None:
        exe = _require(orthanc_binary(), "Orthanc")
        assert self.workdir is not None
        cfg_path = self.workdir / "orthanc.json"
        cfg_path.write_text(json.dumps(self._config(), indent=2))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [exe, "--no-jobs", str(cfg_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=tcp_nodelay_env(),
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self._wait_ready()

    def pause(self) -> None:
        """Stop the Orthanc process, keeping its storage, index and ports (see :meth:`resume`)."""
        self._terminate(graceful=True)

    def resume(self) -> None:
        """Start Orthanc again after :meth:`pause`, on the same ports with the same storage."""
        self._launch()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with status {self.proc.returncode} during start-up; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                self.get("/system", timeout=2.0)
                return
            except (OSError, OrthancError):
                time.sleep(0.1)
        raise OrthancError(
            f"Orthanc did not answer GET /system within {self.startup_timeout:.0f} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def _terminate(self, graceful: bool = False) -> None:
        """End the Orthanc process: SIGTERM and up to 15 s (``graceful``: its index and storage
        are used again, :meth:`pause`), else SIGKILL (Orthanc takes over 3 s to stop cleanly,
        and a test's PACS is thrown away with its folder)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if graceful:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
        proc.wait(timeout=10)

    def _cleanup(self) -> None:
        if self._own_tmp and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop(self) -> None:
        """Stop Orthanc (SIGKILL: nothing of a test's PACS is kept) and remove its own temporary folder."""
        self._terminate()
        self._cleanup()

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- REST -----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Send one REST request; return the response body. Raises OrthancError on HTTP errors."""
        if not path.startswith("/"):
            path = "/" + path
        data: bytes | None = raw
        headers: dict[str, str] = {}
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            headers["Content-Type"] = "application/dicom"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.http_timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from None

    @staticmethod
    def _json(content: bytes) -> Any:
        return json.loads(content) if content.strip() else None

    def get(self, path: str, *, timeout: float | None = None) -> Any:
        """``GET path``, decoded from JSON."""
        return self._json(self.request("GET", path, timeout=timeout))

    def get_bytes(self, path: str) -> bytes:
        """``GET path``, raw bytes."""
        return self.request("GET", path)

    def post(self, path: str, json_body: Any = None) -> Any:
        """``POST path`` with a JSON body, decoded from JSON."""
        return self._json(self.request("POST", path, json_body if json_body is not None else {}))

    def put(self, path: str, json_body: Any) -> Any:
        """``PUT path`` with a JSON body, decoded from JSON."""
        return self._json(self.request("PUT", path, json_body))

    def delete(self, path: str) -> Any:
        """``DELETE path``."""
        return self._json(self.request("DELETE", path))

    def upload(self, path: str | os.PathLike[str]) -> Any:
        """Store one DICOM file through REST (``POST /instances``)."""
        return self._json(self.request("POST", "/instances", raw=Path(path).read_bytes()))

    # -- queries --------------------------------------------------------------------------
    def find(
        self, level: str, query: Mapping[str, str] | None = None, *, expand: bool = True
    ) -> list[Any]:
        """``POST /tools/find``: resources at ``level`` (Patient/Study/Series/Instance).

        With ``expand`` each item is Orthanc's resource dict (``ID``, ``MainDicomTags``, ...);
        otherwise a list of Orthanc IDs.
        """
        body = {"Level": level, "Query": dict(query or {}), "Expand": expand}
        return list(self.post("/tools/find", body))

    def instances_of_study(self, study_uid: str) -> list[dict[str, str]]:
        """Instances of the study with this Study Instance UID.

        Each item: ``id`` (Orthanc), ``sop_class_uid``, ``sop_instance_uid``,
        ``series_instance_uid``, ``transfer_syntax_uid``. Empty if the study is unknown.
        """
        result: list[dict[str, str]] = []
        for study in self.find("Study", {"StudyInstanceUID": study_uid}):
            for series_id in study["Series"]:
                series = self.get(f"/series/{series_id}")
                series_uid = series["MainDicomTags"].get("SeriesInstanceUID", "")
                for inst_id in series["Instances"]:
                    meta = self.get(f"/instances/{inst_id}/metadata?expand")
                    inst = self.get(f"/instances/{inst_id}")
                    result.append(
                        {
                            "id": inst_id,
                            "sop_class_uid": meta.get("SopClassUid", ""),
                            "sop_instance_uid": inst["MainDicomTags"].get("SOPInstanceUID", ""),
                            "series_instance_uid": series_uid,
                            "transfer_syntax_uid": meta.get("TransferSyntax", ""),
                        }
                    )
        return result

    def sop_instance_uids(self, series_uid: str) -> set[str]:
        """SOP Instance UIDs stored for the series with this Series Instance UID."""
        found = self.find("Instance", {"SeriesInstanceUID": series_uid})
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in found}

    def download_instance(self, instance_id: str, dest: str | os.PathLike[str]) -> Path:
        """Save ``GET /instances/{id}/file`` to ``dest`` (a file, or a folder: ``<id>.dcm``)."""
        out = Path(dest)
        if out.is_dir():
            out = out / f"{instance_id}.dcm"
        out.write_bytes(self.get_bytes(f"/instances/{instance_id}/file"))
        return out

    # -- modalities -----------------------------------------------------------------------
    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a DICOM peer (``PUT /modalities/{name}``)."""
        self.put(f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def echo_modality(self, name: str) -> bool:
        """C-ECHO a declared peer from Orthanc (``POST /modalities/{name}/echo``)."""
        try:
            self.post(f"/modalities/{name}/echo", {})
            return True
        except OrthancError:
            return False

    def store_to_modality(
        self, name: str, resources: Iterable[str] | str, *, synchronous: bool = True
    ) -> Any:
        """C-STORE Orthanc resources (IDs of patients/studies/series/instances) to a peer.

        ``POST /modalities/{name}/store``; raises OrthancError when the transfer fails.
        """
        res = [resources] if isinstance(resources, str) else list(resources)
        return self.post(
            f"/modalities/{name}/store", {"Resources": res, "Synchronous": synchronous}
        )


def save_nifti(mask, volume, path: Path) -> None:
    """Write a label mask (slices, rows, columns) as NIfTI (axes columns, rows, slices; RAS affine)."""
    import nibabel as nib
    import numpy as np

    origin = volume.index_to_patient(np.zeros((1, 3)))[0]
    axes = [volume.index_to_patient(np.eye(3)[[d]])[0] - origin for d in (2, 1, 0)]  # columns, rows, slices
    affine = np.eye(4)
    affine[:3, :3] = np.stack(axes, axis=1)
    affine[:3, 3] = origin
    affine[:2] *= -1  # LPS -> RAS
    nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.transpose(2, 1, 0)), affine), str(path))

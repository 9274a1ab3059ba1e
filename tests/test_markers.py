"""Every test that starts a real peer carries ``pytest.mark.integration``.

A real peer is a subprocess: DCMTK ``storescu``/``echoscu``, Orthanc, ``dicom-ai serve`` or the
``dicom-ai`` command (:class:`nodeproc.NodeProcess`, :mod:`subprocess`), Chromium (Selenium's
``webdriver``) or ``dciodvfy``. The test modules are read with :mod:`ast` (nothing is imported).
A test uses a peer when its body does, when a function of its module that it calls or takes as a
fixture does, or when it takes a fixture of a ``conftest.py`` that does (``orthanc``). It is marked
when its module's ``pytestmark``, its class or its own decorators hold ``pytest.mark.integration``.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: ``peers.<name>`` (or ``from peers import <name>``) that start a subprocess.
PEERS_ATTRS = {"storescu", "echoscu", "Orthanc", "dciodvfy"}
#: Modules whose every use starts a subprocess, and the names imported from them that do.
PEER_MODULES = {"subprocess", "selenium.webdriver"}
PEER_IMPORTS = {("nodeproc", "NodeProcess"), ("selenium", "webdriver")}


@dataclass
class Module:
    """What one source file defines and how its functions use peers."""

    path: Path
    peer_names: set[str] = field(default_factory=set)  # local names that are a peer
    peers_aliases: set[str] = field(default_factory=set)  # local names of the ``peers`` module
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    marked_module: bool = False
    marked_tests: set[str] = field(default_factory=set)  # test names marked themselves or by class
    tests: list[str] = field(default_factory=list)


def _is_integration(node: ast.AST) -> bool:
    """Whether ``node`` holds ``<...>.mark.integration``."""
    return any(isinstance(n, ast.Attribute) and n.attr == "integration"
               and isinstance(n.value, ast.Attribute) and n.value.attr == "mark" for n in ast.walk(node))


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """``id`` of every node inside an annotation (a type named there starts nothing)."""
    roots: list[ast.AST] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.arg) and n.annotation is not None:
            roots.append(n.annotation)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None:
            roots.append(n.returns)
        elif isinstance(n, ast.AnnAssign):
            roots.append(n.annotation)
    return {id(m) for r in roots for m in ast.walk(r)}


def parse(source: str, path: Path) -> Module:
    tree = ast.parse(source, filename=str(path))
    mod = Module(path)
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                local = a.asname or a.name.partition(".")[0]
                if a.name in PEER_MODULES:
                    mod.peer_names.add(local)
                elif a.name == "peers":
                    mod.peers_aliases.add(local)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            for a in n.names:
                local = a.asname or a.name
                if n.module in PEER_MODULES or (n.module, a.name) in PEER_IMPORTS or (
                        n.module == "peers" and a.name in PEERS_ATTRS):
                    mod.peer_names.add(local)
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mod.functions[stmt.name] = stmt
            if stmt.name.startswith("test"):
                mod.tests.append(stmt.name)
                if any(_is_integration(d) for d in stmt.decorator_list):
                    mod.marked_tests.add(stmt.name)
        elif isinstance(stmt, ast.ClassDef) and stmt.name.startswith("Test"):
            marked = any(_is_integration(d) for d in stmt.decorator_list) or any(
                isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                  for t in s.targets) and _is_integration(s.value)
                for s in stmt.body)
            for s in stmt.body:
                if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name.startswith("test"):
                    name = f"{stmt.name}.{s.name}"
                    mod.functions[name] = s
                    mod.tests.append(name)
                    if marked or any(_is_integration(d) for d in s.decorator_list):
                        mod.marked_tests.add(name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            named = any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets)
            if named and stmt.value is not None:
                mod.marked_module = mod.marked_module or _is_integration(stmt.value)
    return mod


def peer_uses(mod: Module, peer_fixtures: dict[str, str]) -> dict[str, str]:
    """Function name -> the peer it uses (directly or through the module's functions and fixtures)."""
    skip = _annotation_nodes(ast.Module(body=list(mod.functions.values()), type_ignores=[]))
    direct: dict[str, str] = {}
    refs: dict[str, set[str]] = {}
    for name, fn in mod.functions.items():
        found = ""
        used: set[str] = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        for n in ast.walk(fn):
            if id(n) in skip:
                continue
            if isinstance(n, ast.Name):
                used.add(n.id)
                if n.id in mod.peer_names and not found:
                    found = n.id
            elif (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                  and n.value.id in mod.peers_aliases and n.attr in PEERS_ATTRS and not found):
                found = f"{n.value.id}.{n.attr}"
        for arg in used & set(peer_fixtures):
            if arg not in mod.functions and not found:
                found = f"fixture {arg} ({peer_fixtures[arg]})"
        if found:
            direct[name] = found
        refs[name] = used & set(mod.functions)
    uses = dict(direct)
    changed = True
    while changed:
        changed = False
        for name, callees in refs.items():
            if name not in uses:
                via = next((c for c in sorted(callees) if c in uses), None)
                if via is not None:
                    uses[name] = f"{via} -> {uses[via]}"
                    changed = True
    return uses


def conftest_peer_fixtures(root: Path) -> dict[str, str]:
    """Fixtures of every ``conftest.py`` under ``root`` that use a peer, with the peer."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("conftest.py")):
        mod = parse(path.read_text(encoding="utf-8"), path)
        found.update(peer_uses(mod, {}))
    return found


def unmarked(mod: Module, peer_fixtures: dict[str, str]) -> list[str]:
    """``test -> peer`` for each test of ``mod`` that uses a peer without the integration mark."""
    if mod.marked_module:
        return []
    uses = peer_uses(mod, peer_fixtures)
    return [f"{t} uses {uses[t]}" for t in mod.tests if t in uses and t not in mod.marked_tests]


def test_every_test_that_starts_a_peer_is_marked_integration() -> None:
    fixtures = conftest_peer_fixtures(TESTS)
    assert "orthanc" in fixtures  # the scan sees the shared Orthanc fixture
    missing = []
    for path in sorted(TESTS.rglob("test_*.py")):
        mod = parse(path.read_text(encoding="utf-8"), path)
        missing += [f"{path.relative_to(TESTS)}::{line}" for line in unmarked(mod, fixtures)]
    hint = "add pytest.mark.integration (module pytestmark or the test's decorator):"
    assert not missing, "\n".join([hint, *missing])


def _scan(source: str, fixtures: dict[str, str] | None = None) -> list[str]:
    return unmarked(parse(textwrap.dedent(source), Path("test_x.py")), fixtures or {})


def test_the_scan_finds_peers_directly_through_helpers_and_fixtures() -> None:
    found = _scan("""
        import subprocess
        import peers
        from nodeproc import NodeProcess

        def _send(port):
            return peers.storescu("127.0.0.1", port, [])

        def test_direct(tmp_path):
            subprocess.run(["true"])

        def test_helper():
            _send(104)

        def test_node(tmp_path):
            NodeProcess(tmp_path).start()

        def test_shared_fixture(orthanc):
            pass

        def test_annotation_only(pacs: peers.Orthanc = None) -> None:
            peers.free_port()
    """, {"orthanc": "peers.Orthanc"})
    assert [line.split()[0] for line in found] == [
        "test_direct", "test_helper", "test_node", "test_shared_fixture"]
    assert found[1] == "test_helper uses _send -> peers.storescu"


def test_the_scan_accepts_module_and_test_marks() -> None:
    assert _scan("""
        import pytest
        import peers

        pytestmark = [pytest.mark.integration, pytest.mark.skipif(False, reason="")]

        def test_store():
            peers.echoscu("127.0.0.1", 104)
    """) == []
    assert _scan("""
        import pytest
        from selenium import webdriver

        @pytest.fixture
        def browser():
            return webdriver.Chrome()

        @pytest.mark.integration
        def test_page(browser):
            pass

        def test_other(browser):
            pass
    """) == ["test_other uses browser -> webdriver"]

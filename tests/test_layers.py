"""The import contract of dicom_ai: every import points down the layers, never up.

The import graph is read from the source with :mod:`ast` (nothing is imported), module-level and
function-level imports alike. Each top-level package (or module) of ``dicom_ai`` sits on one
layer of :data:`LAYERS`; a module may import its own layer and those below it. A function-local
import of a ``dicom_ai`` module is allowed only where it saves start-up time (torch, highdicom,
the web stack, ...) or must wait for something (a child process's ``die_with_parent``), and says
so: a ``# deferred: <reason>`` comment on its line or the line above.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "dicom_ai"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Layers, bottom first. ``dicom_ai`` is the package's own ``__init__`` (its version).
LAYERS: list[set[str]] = [
    {"dicom_ai", "config", "logconf", "lifetime"},
    {"dicom"},  # header values, image-plane geometry
    {"cache"},  # index and file store
    {"package"},  # model package manifest, network definitions
    {"infer"},  # volume, preprocessing, runtimes
    {"report"},  # SEG, SR, measurements, findings
    {"evaluate"},
    {"models"},  # registry, conversion, MONAI bundles
    {"train"},
    {"schedule"},  # completion, routing
    {"export"},
    {"receive"},
    {"dispatch"},  # jobs to workers on other hosts (Celery)
    {"worker"},
    {"web"},
    {"node"},
    {"cli", "demo"},
]

#: The marker a function-local ``dicom_ai`` import needs, on its line or the line above.
DEFERRED = "# deferred:"


@dataclass(frozen=True)
class Import:
    """One imported ``dicom_ai`` module: where (file, line) and of what."""

    path: Path
    line: int
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted
    local: bool  # inside a function
    explained: bool  # a DEFERRED comment on its line or the line above


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a file under ``root`` (the package folder)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str, root: Path) -> bool:
    rel = Path(*dotted.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> list[Import]:
    """The ``dicom_ai`` imports of one source file (``import``, ``from``, relative ones)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    source = module_name(path, root)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    tree = ast.parse(text, filename=str(path))
    found: list[Import] = []

    def explained(node: ast.stmt) -> bool:
        above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
        return DEFERRED in lines[node.lineno - 1] or above.startswith(DEFERRED)

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*up, base] if base else up)
                # ``from pkg import sub`` imports the module pkg.sub when there is one
                targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}", root) else base
                           for a in child.names] if base.split(".")[0] == root.name else [base]
            else:
                visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
                continue
            for target in dict.fromkeys(targets):
                if target.split(".")[0] == root.name:
                    found.append(Import(path, child.lineno, source, target, local, explained(child)))

    visit(tree, False)
    return found


def all_imports(root: Path = ROOT) -> list[Import]:
    """The ``dicom_ai`` imports of every module of the package."""
    return [i for path in sorted(root.rglob("*.py")) for i in imports_of(path, root)]


def unit(dotted: str) -> str:
    """The top-level package or module of ``dicom_ai`` a module belongs to (``dicom_ai`` for the
    package's own ``__init__``)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(name: str) -> int | None:
    """Index in :data:`LAYERS` of a top-level package or module; None when it has none."""
    return next((i for i, layer in enumerate(LAYERS) if name in layer), None)


def upward(imports: list[Import]) -> list[str]:
    """The imports that point up the layers, as ``file:line: a (layer) imports b (layer)``."""
    out = []
    for i in imports:
        a, b = layer_of(unit(i.source)), layer_of(unit(i.target))
        if a is not None and b is not None and b > a:
            out.append(f"{i.path.relative_to(ROOT.parent)}:{i.line}: {i.source} (layer {a}) imports "
                       f"{i.target} (layer {b})")
    return out


def test_every_package_sits_on_a_layer():
    names = {unit(module_name(p, ROOT)) for p in ROOT.rglob("*.py")}
    missing = sorted(n for n in names if layer_of(n) is None)
    assert not missing, f"add {missing} to LAYERS in {Path(__file__).name}"
    listed = set().union(*LAYERS)
    stale = sorted(listed - names)
    assert not stale, f"LAYERS names {stale}, which dicom_ai no longer has"
    assert sum(len(layer) for layer in LAYERS) == len(listed), "a name is on two layers"


def test_no_import_points_up_the_layers():
    bad = upward(all_imports())
    assert not bad, "imports against the layering (move the code down, or the import up):\n" + "\n".join(bad)


def test_function_local_imports_say_why():
    bad = [f"{i.path.relative_to(ROOT.parent)}:{i.line}: {i.target}"
           for i in all_imports() if i.local and not i.explained]
    assert not bad, (
        "function-local dicom_ai imports without a '# deferred: <reason>' comment (import at "
        "module level unless deferring saves start-up time):\n" + "\n".join(bad))


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A package ``dicom_ai`` with a low module and a high one that imports it in every way."""
    root = tmp_path / PACKAGE
    (root / "low").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "low" / "__init__.py").write_text("from . import base\n")
    (root / "low" / "base.py").write_text("def f():\n    from dicom_ai.high import g\n")
    (root / "high.py").write_text(
        "import dicom_ai.low.base\n"
        "from dicom_ai.low import base\n"
        "def g():\n"
        "    from dicom_ai.low.base import f  # deferred: start-up time\n"
        "    # deferred: start-up time\n"
        "    from .low import base\n"
        "    lambda: __import__('os')\n"
    )
    return root


def test_the_walker_sees_every_kind_of_import(toy: Path):
    got = {(i.path.name, i.line, i.source, i.target, i.local, i.explained) for i in all_imports(toy)}
    assert got == {
        ("__init__.py", 1, "dicom_ai.low", "dicom_ai.low.base", False, False),
        ("base.py", 2, "dicom_ai.low.base", "dicom_ai.high", True, False),
        ("high.py", 1, "dicom_ai.high", "dicom_ai.low.base", False, False),
        ("high.py", 2, "dicom_ai.high", "dicom_ai.low.base", False, False),
        ("high.py", 4, "dicom_ai.high", "dicom_ai.low.base", True, True),
        ("high.py", 6, "dicom_ai.high", "dicom_ai.low.base", True, True),
    }

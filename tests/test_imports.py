"""The house's import rules, checked on every file (DESIGN.md, "Layout").

- The core is the ground floor: no file of ``cxr/`` but the front door ``cxr/cli.py``
  imports a wing (``cxr.training``, ``cxr.export``, ``cxr.client``, ``cxr.benchmarks``).
- ``model_repository/`` runs inside tritonserver with only ``cxr`` beside it: it imports
  nothing from ``cxr.export`` or ``cxr.training`` (build-time code, torch).

Every import counts: at the top, inside a function, relative, ``from cxr import export``,
and ``importlib.import_module("cxr.client")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WINGS = ("cxr.training", "cxr.export", "cxr.client", "cxr.benchmarks")
BUILD_TIME = ("cxr.export", "cxr.training")
FRONT_DOOR = ROOT / "cxr" / "cli.py"


def _package(path: Path) -> str:
    """The dotted package of a file under ``cxr/`` (``cxr/serving/steps.py`` -> ``cxr.serving``)."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def imported_modules(source: str, package: str = "") -> set[str]:
    """Every module ``source`` imports, absolute, wherever the import statement stands.

    ``from cxr import export`` yields ``cxr.export`` as well as ``cxr`` (the name may be a
    submodule); ``package`` resolves relative imports.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            found.add(node.args[0].value)
    return found


def _forbidden(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


CORE = sorted(p for p in (ROOT / "cxr").rglob("*.py") if p != FRONT_DOOR)
ADAPTERS = sorted((ROOT / "model_repository").rglob("*.py"))


def test_the_scans_see_the_files_they_guard():
    assert len(CORE) > 20 and ROOT / "cxr" / "serving" / "steps.py" in CORE
    assert {p.relative_to(ROOT).as_posix() for p in ADAPTERS} >= {f"model_repository/{m}/1/model.py"
                                                                  for m in ("preprocess", "detector", "postprocess")}


def test_no_core_file_but_the_front_door_imports_a_wing():
    found = {p.relative_to(ROOT).as_posix(): _forbidden(imported_modules(p.read_text(), _package(p)), WINGS) for p in CORE}
    assert not {f: m for f, m in found.items() if m}, "the core is the ground floor: only cxr/cli.py imports the wings"


def test_the_front_door_does_import_the_wings():
    """cxr/cli.py is the exception because it registers the wings' commands; if it stopped, the rule could tighten."""
    assert set(_forbidden(imported_modules(FRONT_DOOR.read_text(), "cxr"), WINGS)) >= {"cxr.training.cli", "cxr.export.cli"}


def test_the_model_repository_imports_nothing_built_at_export_time():
    found = {p.relative_to(ROOT).as_posix(): _forbidden(imported_modules(p.read_text()), BUILD_TIME) for p in ADAPTERS}
    assert not {f: m for f, m in found.items() if m}, "model.py files run in tritonserver: import cxr, not export/training"


@pytest.mark.parametrize("source", [
    "import cxr.training.train",
    "import cxr.export as export",
    "from cxr.client.sdk import DetectorClient",
    "from cxr import benchmarks",
    "def later():\n    from cxr.export.onnx_export import export_onnx\n",
    "class C:\n    def m(self):\n        import cxr.client\n",
    "from ..training import weights",  # relative, from cxr/serving/
    "from .. import export",
    "import importlib\nimportlib.import_module('cxr.training.checkpoint')\n",
])
def test_the_scan_catches_every_spelling_of_an_import(source):
    assert _forbidden(imported_modules(source, "cxr.serving"), WINGS)


@pytest.mark.parametrize("source", ["from cxr.contract import ENSEMBLE", "import cxr.serving.steps",
                                    "from . import steps", "from cxr import labels",
                                    "x = 'cxr.training is named in a string'"])
def test_the_scan_lets_the_core_import_itself(source):
    assert not _forbidden(imported_modules(source, "cxr.serving"), WINGS)

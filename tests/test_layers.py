"""The layers stay apart: the core is pure and the bus plumbing knows nothing above it.

The core decides the limits that protect the cells; it gets readings, settings and the time as
arguments so every decision can be replayed in a test. One import of the bus, the event loop, the
file system or the clock would quietly end that, so the rules are checked on the source itself.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import aggbatt

PACKAGE = Path(aggbatt.__file__).resolve().parent

# Outside the core: the layers above it, the bus library, the config boundary's validation, the
# event loop, and every module that reaches files, processes, sockets or the clock.
CORE_FORBIDDEN = (
    "aggbatt.bus", "aggbatt.daemon", "aggbatt.tools", "aggbatt.config", "aggbatt.sim",
    "aggbatt.bench", "aggbatt.cli",
    "dbus_fast", "pydantic", "pydantic_core", "asyncio",
    "socket", "subprocess", "os", "pathlib", "io", "shutil", "tempfile", "time", "sys", "signal",
    "threading", "multiprocessing", "select", "selectors",
)
# Reading the clock through datetime or date is as impure as importing time; converting a time
# the caller passed in (fromtimestamp) is not.
CLOCK_CALLS = ("now", "today", "utcnow")


def _modules(layer: str) -> Iterator[Path]:
    yield from sorted((PACKAGE / layer).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every module the source imports, relative imports resolved against `module`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[:len(base) - drop] if drop else base
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            yield node.lineno, target
            # `from aggbatt import daemon` names a module in the alias, not in `module`.
            for alias in node.names:
                yield node.lineno, f"{target}.{alias.name}"


def _under(name: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def core_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    tree = ast.parse(source)
    found = []
    for line, name in imported_modules(tree, module, is_package):
        if _under(name, CORE_FORBIDDEN) is not None:
            found.append(f"{module}:{line} imports {name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id == "open":
            found.append(f"{module}:{node.lineno} calls open()")
        if isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_CALLS:
            found.append(f"{module}:{node.lineno} reads the clock ({node.func.attr}())")
    return sorted(set(found))


# The common error base sits below every layer: it imports nothing (checked below).
BELOW_EVERY_LAYER = ("aggbatt.bus", "aggbatt.errors")


def bus_violations(source: str, module: str, is_package: bool = False) -> list[str]:
    found = []
    for line, name in imported_modules(ast.parse(source), module, is_package):
        if _under(name, ("aggbatt",)) and not _under(name, BELOW_EVERY_LAYER) and name != "aggbatt":
            found.append(f"{module}:{line} imports {name}")
    return sorted(set(found))


def _check(layer: str, rule: Callable[[str, str, bool], list[str]]) -> list[str]:
    found: list[str] = []
    for path in _modules(layer):
        found += rule(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
    return found


def test_the_core_modules_are_all_checked() -> None:
    names = {_module_name(p) for p in _modules("core")}
    assert {"aggbatt.core.engine", "aggbatt.core.freshness", "aggbatt.core.strategies",
            "aggbatt.core.strategies.own_charge"} <= names


def test_core_imports_no_bus_io_clock_or_upper_layer() -> None:
    assert _check("core", core_violations) == []


def test_bus_imports_nothing_above_it() -> None:
    assert list(_modules("bus"))
    assert _check("bus", bus_violations) == []


def test_the_error_base_imports_nothing() -> None:
    tree = ast.parse((PACKAGE / "errors.py").read_text(encoding="utf-8"))
    assert [name for _, name in imported_modules(tree, "aggbatt.errors", False)
            if name not in ("__future__", "__future__.annotations")] == []


@pytest.mark.parametrize("source", [
    "import os\n",
    "from pathlib import Path\n",
    "import time\n",
    "from asyncio import sleep\n",
    "from aggbatt.bus.service import BusItemService\n",
    "from aggbatt import daemon\n",
    "from ..tools import status\n",
    "from aggbatt.config import Config\n",
    "import dbus_fast.aio\n",
    "def f():\n    import subprocess\n",
    "data = open('x').read()\n",
    "from datetime import datetime\nstamp = datetime.now()\n",
])
def test_the_core_rule_catches_a_violation(source: str) -> None:
    assert core_violations(source, "aggbatt.core.engine") != []


@pytest.mark.parametrize("source", [
    "import logging\nimport math\nfrom datetime import datetime\n",
    "from aggbatt.core.snapshot import PackSnapshot\n",
    "from . import charge\n",
])
def test_the_core_rule_allows_pure_imports(source: str) -> None:
    assert core_violations(source, "aggbatt.core.strategies", is_package=True) == []


@pytest.mark.parametrize("source", [
    "from aggbatt.core.snapshot import PackSnapshot\n",
    "from aggbatt.daemon import Daemon\n",
    "from ..tools.status import STATUS_INTERFACE\n",
])
def test_the_bus_rule_catches_an_upward_import(source: str) -> None:
    assert bus_violations(source, "aggbatt.bus.service") != []

"""Every package the code imports is declared in pyproject.toml (required, or in an extra)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")   # Python 3.11+


def _imported_top_level_modules() -> set[str]:
    names = set()
    for path in (ROOT / "src" / "showtell").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"showtell"}


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = _declared(project["dependencies"])
    optional = set().union(*(_declared(v) for v in project["optional-dependencies"].values()))
    distributions = packages_distributions()
    undeclared = []
    for module in sorted(_imported_top_level_modules()):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & (required | optional):
            undeclared.append(f"{module} (from {', '.join(sorted(names))})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)


def test_the_service_imports_are_required_not_optional():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = _declared(project["dependencies"])
    assert {"pydantic", "starlette", "fastapi", "uvicorn"} <= required
    torch = next(r for r in project["dependencies"] if r.startswith("torch>"))
    assert "<" in torch, "torch needs an upper bound: the newest release tested"


def test_make_checks_that_every_dev_extra_imports():
    """`make test` imports each package of the dev extra after installing it (scripts/check_dev_extras.py),
    so an extra that failed to install stops the run instead of skipping its tests."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_dev_extras
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    distributions = packages_distributions()
    checked = set()
    for module in check_dev_extras.MODULES:
        top = module.split(".")[0]
        checked.update(d.lower().replace("_", "-") for d in distributions.get(top, [top]))
    unchecked = _declared(project["optional-dependencies"]["dev"]) - checked
    assert not unchecked, f"scripts/check_dev_extras.py does not import these dev extras: {sorted(unchecked)}"
    assert "check_dev_extras.py" in (ROOT / "Makefile").read_text()
    assert check_dev_extras.main() == 0

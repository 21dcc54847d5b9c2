"""How the test suite is laid out: each test module stands alone. What several modules share lives in
tests/helpers/ (names and fixtures) or in a conftest.py (fixtures), never in a test module that others
import: importing one would also collect its fixtures and tie two files' tests together. And the
slow groups stay marked, so that `-m "not browser"` leaves out every test that starts Chromium."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every module a source imports, by its absolute dotted name: `import a.b`, `from a import b`
    (a.b where b may be a module, and a), relative imports too, and at any depth (in functions)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def standalone_modules() -> dict[str, Path]:
    """The modules under tests/ that nothing may import: all but tests/helpers/*, the conftest.py
    files and the packages' __init__.py."""
    return {module_name(path): path for path in TESTS.rglob("*.py")
            if path.name not in ("conftest.py", "__init__.py") and "helpers" not in path.relative_to(TESTS).parts}


def test_the_scan_resolves_every_form_of_import():
    source = ("import tests.core.test_store\nfrom tests.frontends.web.test_api import ALICE\n"
              "from tests.frontends.web import test_routes\nfrom .test_errors import x\n"
              "from . import test_page\nfrom .. import test_quotas\n"
              "def f():\n    from tests.helpers.api import png\n")
    found = imported_modules(source, "tests.frontends.web.test_security")
    assert {"tests.core.test_store", "tests.frontends.web.test_api", "tests.frontends.web.test_routes",
            "tests.frontends.web.test_errors", "tests.frontends.web.test_page", "tests.frontends.test_quotas",
            "tests.helpers.api"} <= found
    assert "tests.frontends.web.test_page" in imported_modules("from .web import test_page\n", "tests.frontends",
                                                               is_package=True)


def test_no_module_under_tests_imports_a_test_module():
    modules = standalone_modules()
    assert "tests.frontends.web.test_api" in modules and "tests.test_structure" in modules
    assert not any(name.startswith("tests.helpers.") for name in modules)
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        imports = imported_modules(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
        offenders += [f"{path.relative_to(REPO)} imports {name}" for name in sorted(imports & modules.keys())]
    if offenders:
        pytest.fail("A test module imports another; move what they share into tests/helpers/ "
                    "(or fixtures into a conftest.py):\n" + "\n".join(offenders))


def marks(source: str) -> set[str]:
    """The marks a module's `pytestmark` names (`pytest.mark.NAME`, alone or in a list)."""
    found: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            found.update(n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)
                         and isinstance(n.value, ast.Attribute) and n.value.attr == "mark")
    return found


def test_every_module_that_drives_chromium_is_marked_browser():
    """`-m "not browser"` must leave out every test that starts Chromium (through tests/helpers/page.py)."""
    assert marks('pytestmark = [pytest.mark.train, pytest.mark.usefixtures("x")]\n') == {"train", "usefixtures"}
    browsing = [path for path in sorted(TESTS.rglob("test_*.py"))
                if {"tests.helpers.page", "playwright", "playwright.sync_api"}
                & imported_modules(path.read_text(encoding="utf-8"), module_name(path))]
    assert len(browsing) >= 5
    unmarked = [str(path.relative_to(REPO)) for path in browsing
                if "browser" not in marks(path.read_text(encoding="utf-8"))]
    assert not unmarked, f"these start Chromium; add `pytestmark = pytest.mark.browser`: {unmarked}"

"""bot/core stays in small rooms with one job each: a module that outgrows the limit should give a
whole concern a module of its own (as pictures, derived jobs and the model view did), not be
squeezed. A structural check, like the layering test: it reads the source and runs nothing."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "bot" / "core"
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 100


def test_no_core_module_is_over_the_line_limit():
    sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in CORE.glob("*.py")}
    assert sizes, CORE
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


def test_no_core_function_is_over_the_line_limit():
    long = {}
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.name}:{node.name}"] = lines
    assert long == {}

"""No function in bot/ or training/ is over MAX_LINES lines: a longer one is split into named steps."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 100



def long_functions(path: Path, root: Path = REPO) -> dict[str, int]:
    """'path::Class.function' -> lines, for every function (nested ones too) over MAX_LINES."""
    found: dict[str, int] = {}
    where = path.relative_to(root).as_posix()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1
                    if lines > MAX_LINES:
                        found[f"{where}::{name}"] = lines
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), "")
    return found


def test_no_function_is_over_the_limit():
    found: dict[str, int] = {}
    for folder in ("bot", "training"):
        for path in sorted((REPO / folder).rglob("*.py")):
            found.update(long_functions(path))
    assert not found, f"functions over {MAX_LINES} lines (split them into named steps): {found}"


def indent(text: str, depth: int) -> str:
    return "\n".join("    " * depth + line for line in text.splitlines())


def test_the_scan_sees_long_and_nested_functions(tmp_path):
    body = "\n".join("x = 1" for _ in range(MAX_LINES))
    source = tmp_path / "sample.py"
    source.write_text(f"def short():\n{indent(body[:-6], 1)}\n\n"  # MAX_LINES lines in all: allowed
                      f"class C:\n    async def long(self):\n{indent(body, 2)}\n\n"
                      f"    def outer(self):\n        def inner():\n{indent(body, 3)}\n")
    assert long_functions(source, tmp_path) == {"sample.py::C.long": MAX_LINES + 1,
                                                "sample.py::C.outer": MAX_LINES + 2,
                                                "sample.py::C.outer.inner": MAX_LINES + 1}

"""bot/engine holds only torch code: every module there imports torch or diffusers. What runs
without them lives elsewhere (bot/models, bot/outputs.py, bot/executors), so listing models,
publishing them and writing images never wait for torch to load."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "bot" / "engine"


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_engine_module_is_torch_code():
    modules = [p for p in sorted(ENGINE.glob("*.py")) if p.name != "__init__.py"]
    assert modules
    without = [p.name for p in modules if not imported_packages(p) & {"torch", "diffusers"}]
    assert without == [], f"move these out of bot/engine (they need no torch): {without}"

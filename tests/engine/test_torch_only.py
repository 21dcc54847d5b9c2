"""bot/engine holds only torch code: every module there imports torch or diffusers, or builds on an
engine module that does (describe.py runs the captioner's model). What runs
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


def imported_engine_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bot.engine."):
            names.add(node.module.split(".")[2] + ".py")
    return names


def test_every_engine_module_is_torch_code():
    modules = [p for p in sorted(ENGINE.glob("*.py")) if p.name != "__init__.py"]
    assert modules
    torch_code = {p.name for p in modules if imported_packages(p) & {"torch", "diffusers"}}
    grown = True
    while grown:  # a module that runs another engine module's torch code is torch code too
        more = {p.name for p in modules if imported_engine_modules(p) & torch_code} - torch_code
        torch_code |= more
        grown = bool(more)
    without = [p.name for p in modules if p.name not in torch_code]
    assert without == [], f"move these out of bot/engine (they need no torch): {without}"

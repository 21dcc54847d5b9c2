"""The layering rules of docs/architecture.md, every one of them, checked here.

Statically: every module of a layer is parsed (ast) and each import it names is checked, those
inside functions, under `if TYPE_CHECKING`, relative ones and `importlib.import_module("...")`
included, so a lazy import cannot slip an arrow the wrong way. At run time: a fresh interpreter
imports every core module, runs a job through the service on the stand-in executor, and none of
torch, diffusers, transformers or a platform SDK is loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TORCH = ("torch", "diffusers", "transformers")
SQL = ("sqlite3", "aiosqlite")
PLATFORM_SDKS = ("discord", "telegram")
BOT_PARTS = tuple(sorted(f"bot.{p.stem}" for p in (ROOT / "bot").iterdir()
                         if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()))


@dataclass(frozen=True)
class Rule:
    layer: str  # a folder, relative to the repository root
    banned: tuple[str, ...]  # modules (and everything below them) it never imports
    allowed: tuple[str, ...] = ()  # ... except these (and everything below them)


# The model families' declarations: importable without torch (checked below), read by the model
# store for each variant's family and traits.
FAMILIES = "bot.engine.families"


RULES = (
    Rule("bot/frontends", TORCH + SQL),
    Rule("bot/core", TORCH + PLATFORM_SDKS + ("bot.engine", "bot.executors", "bot.frontends")),
    Rule("bot/models", TORCH + ("bot.core", "bot.engine", "bot.executors", "bot.frontends"), allowed=(FAMILIES,)),
    Rule("bot/files", TORCH + tuple(part for part in BOT_PARTS if part != "bot.files")),
    Rule("bot/engine", ("training", "bot.frontends")),
    Rule("training", ("bot.frontends",)),
)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` imports anywhere in it; `from a import b` counts as a and a.b (b may be
    a module)."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            names.add(node.args[0].value)
    return names


def is_within(name: str, banned: str) -> bool:
    return name == banned or name.startswith(banned + ".")


def broken_arrows(rule: Rule, root: Path = ROOT) -> list[str]:
    modules = sorted((root / rule.layer).rglob("*.py"))
    assert modules, f"{rule.layer} has no modules: the rule checks nothing"
    return [f"{path.relative_to(root)} imports {name}"
            for path in modules for name in sorted(imported_modules(path, root))
            if any(is_within(name, banned) for banned in rule.banned)
            and not any(is_within(name, allowed) for allowed in rule.allowed)]


@pytest.mark.parametrize("rule", RULES, ids=[rule.layer for rule in RULES])
def test_no_layer_imports_what_its_rule_forbids(rule):
    assert broken_arrows(rule) == []


def test_every_import_of_the_project_names_a_module_or_name_that_exists():
    """Imports inside functions run only when called: one that names a moved module would fail
    there, at run time, so every import of `bot.` or `training.` is looked up here."""
    import importlib
    import importlib.util

    missing = []
    for path in sorted([*(ROOT / "bot").rglob("*.py"), *(ROOT / "training").rglob("*.py")]):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith(("bot", "training")):
                if importlib.util.find_spec(node.module) is None:
                    missing.append(f"{path.relative_to(ROOT)}: {node.module}")
                    continue
                # The torch-free layers are cheap to import, so their imported names are checked too.
                torch_free = node.module.startswith(("bot.core", "bot.models", "bot.files"))
                module = importlib.import_module(node.module) if torch_free else None
                for alias in node.names if module is not None else ():
                    if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                        missing.append(f"{path.relative_to(ROOT)}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(("bot.", "training.")) and importlib.util.find_spec(alias.name) is None:
                        missing.append(f"{path.relative_to(ROOT)}: {alias.name}")
    assert missing == []


def test_every_engine_module_is_torch_code():
    """bot/engine holds only torch code: every module imports torch, diffusers or transformers, or
    builds on an engine module that does (describe.py runs the captioner). What runs without them
    lives elsewhere (bot/models, bot/files, bot/outputs.py, bot/executors), so listing models,
    publishing them and writing images never wait for torch to load."""
    modules = {module_name(p): imported_modules(p) for p in (ROOT / "bot" / "engine").rglob("*.py")
               if p.name != "__init__.py"}
    del modules[f"{FAMILIES}.base"]  # the vocabulary of the family declarations, read without torch
    assert modules
    torch_code = {name for name, imported in modules.items() if any(is_within(i, t) for i in imported for t in TORCH)}
    while more := {name for name, imported in modules.items() if imported & torch_code} - torch_code:
        torch_code |= more  # running another engine module's torch code is torch code too
    assert sorted(set(modules) - torch_code) == [], "move these out of bot/engine: they need no torch"


def test_the_check_sees_lazy_relative_and_dynamic_imports(tmp_path):
    """A rule is broken by any of these, so the check must see each of them."""
    layer = tmp_path / "bot" / "core"
    layer.mkdir(parents=True)
    (layer / "__init__.py").write_text("")
    (layer / "lazy.py").write_text("def run():\n    import torch.nn\n")
    (layer / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from discord import Client\n")
    (layer / "relative.py").write_text("from ..engine import engine\n")
    (layer / "dynamic.py").write_text("import importlib\nimportlib.import_module('bot.executors.local')\n")
    (layer / "fine.py").write_text("from bot.models.registry import Registry\nimport bot.corex\n")
    assert broken_arrows(RULES[1], tmp_path) == [
        "bot/core/dynamic.py imports bot.executors.local",
        "bot/core/lazy.py imports torch.nn",
        "bot/core/relative.py imports bot.engine",
        "bot/core/relative.py imports bot.engine.engine",
        "bot/core/typed.py imports discord",
        "bot/core/typed.py imports discord.Client",
    ]


def test_the_core_serves_a_job_without_torch_or_platform_libraries(tmp_path):
    script = textwrap.dedent(f"""
        import asyncio, importlib, pkgutil, sys
        from pathlib import Path
        import bot.core
        for module in pkgutil.iter_modules(bot.core.__path__):
            importlib.import_module("bot.core." + module.name)
        from bot.config import config_from_dict
        from bot.core.jobs import Origin
        from bot.stack import open_stack
        from tests.helpers.executor import FakeExecutor, fake_model_store

        async def main():
            config = config_from_dict({{"storage": {{"state_dir": {str(tmp_path / "state")!r},
                                                    "models_dir": {str(tmp_path / "models")!r}}},
                                       "limits": {{"min_side": 32}}}})
            fake_model_store(Path(config.storage.models_dir))
            stack = await open_stack(config, FakeExecutor())
            service = stack.service
            job = await service.submit("a red circle --steps 2", Origin("web", "alice"))
            while not (await service.job(job.job_id)).finished:
                await asyncio.sleep(0.01)
            print((await service.job(job.job_id)).status)
            await stack.close()

        asyncio.run(main())
        loaded = sorted(name for name in ("torch", "diffusers", "transformers", "discord", "telegram")
                        if name in sys.modules)
        print("loaded:", loaded)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["done", "loaded: []"]


def top_level_imports(path: Path) -> set[str]:
    """What a module imports when it is imported (not inside its functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module or "")
    return names


def test_family_modules_import_only_declarations_at_the_top():
    """The model store imports the families package, so what a family module imports when imported
    must be declarations too: the standard library, the model store's vocabulary and its own package.
    Its hooks import the torch code they run when called."""
    allowed = ("__future__", "bot.models.variant", FAMILIES, "json", "pathlib", "dataclasses", "typing")
    modules = sorted((ROOT / "bot" / "engine" / "families").glob("*.py"))
    assert len(modules) > 3
    stray = [f"{path.relative_to(ROOT)} imports {name}" for path in modules for name in sorted(top_level_imports(path))
             if not any(is_within(name, ok) for ok in allowed)]
    assert stray == []


def test_the_family_catalogue_loads_without_torch():
    script = textwrap.dedent("""
        import sys
        import bot.engine.families as families
        import bot.models.registry
        print(len(families.ALL), sorted(n for n in ("torch", "diffusers", "transformers", "compel") if n in sys.modules))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    count, loaded = result.stdout.strip().split(" ", 1)
    assert int(count) >= 3 and loaded == "[]"

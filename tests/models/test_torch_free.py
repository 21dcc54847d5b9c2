"""The model store format runs without torch (bot/models, a layering rule of docs/architecture.md):
a fresh interpreter imports every bot.models module, publishes a variant, scans the store, and
neither torch nor diffusers is loaded."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_model_store_publishes_and_scans_without_torch(tmp_path):
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import bot.models
        for module in pkgutil.iter_modules(bot.models.__path__):
            importlib.import_module("bot.models." + module.name)
        from bot.models.publish import publish_variant
        from bot.models.registry import Registry

        def write(folder):
            (folder / "model_index.json").write_text('{{"_class_name": "StableDiffusionPipeline"}}')

        models = {str(tmp_path / "models")!r}
        publish_variant(models, "demo", write, {{"steps": 3}}, "published without torch")
        registry = Registry(models)
        registry.scan()
        print(registry.get("demo").description)
        loaded = sorted(name for name in ("torch", "diffusers", "transformers", "safetensors.torch")
                        if name in sys.modules)
        print("loaded:", loaded)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["published without torch", "loaded: []"]

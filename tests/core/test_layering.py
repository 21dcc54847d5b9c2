"""The core runs without torch, diffusers or a platform SDK (the layering rule of DESIGN.md):
a fresh interpreter imports every core module, runs a job through the service on the stand-in
executor, and none of those libraries is loaded."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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

"""Shared test set-up: never reach a model hub; tiny random-weight models built on the spot."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
# As `imagebot` itself does: idle torch threads sleep instead of spinning (this machine is shared).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.pop("IMAGEBOT_CONFIG", None)

from bot.logs import keep_secrets_out  # noqa: E402

keep_secrets_out()  # as `imagebot` does: frontends run in-process here, with their tokens

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline folder (random weights, seed 0), built once per run."""
    from training.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "pipeline")


def add_pipeline_variant(models_dir: Path, name: str, source: Path, toml: str = 'kind = "pipeline"\n') -> Path:
    folder = models_dir / name
    shutil.copytree(source, folder)
    (folder / "variant.toml").write_text(toml, encoding="utf-8")
    return folder


@pytest.fixture
def models_dir(tmp_path, tiny_pipeline_dir) -> Path:
    """A model store holding one tiny pipeline variant called 'demo'."""
    models = tmp_path / "models"
    models.mkdir()
    add_pipeline_variant(models, "demo", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 3\n')
    return models


# --- a running service, as `imagebot serve` builds it ----------------------------------------------

TEST_SETTINGS = {
    "limits": {"min_side": 32},
    "models": {"rescan_seconds": 0.0},
    "engine": {"device": "cpu"},
    "queue": {"shutdown_grace": 10.0},
}


def service_config(state_dir: Path, models_dir: Path, **sections: dict):
    """TEST_SETTINGS on `state_dir` and `models_dir`; `sections` add to or override them per config
    section."""
    from bot.config import config_from_dict

    settings = {"storage": {"state_dir": str(state_dir), "models_dir": str(models_dir)},
                **{name: dict(values) for name, values in TEST_SETTINGS.items()}}
    for name, values in sections.items():
        settings.setdefault(name, {}).update(values)
    return config_from_dict(settings)


async def start_service(state_dir: Path, models_dir: Path, **sections: dict):
    """Store, registry, worker and service on `models_dir`, started as `imagebot serve` starts them
    (bot.stack.open_stack); `sections` as for service_config. Returns (config, store, executor, service)."""
    from bot.stack import open_stack

    stack = await open_stack(service_config(state_dir, models_dir, **sections))
    return stack.config, stack.store, stack.executor, stack.service


async def stop_service(service, store) -> None:
    """Cancel what is left (a running job stops at its next step, so stopping never waits for a long
    batch), then stop the service and close the store."""
    from bot.core.errors import UserError
    from bot.core.jobs import Origin

    teardown = Origin("test", "teardown", is_admin=True)
    for job in [*await store.running(), *await store.queued()]:
        try:
            await service.cancel(job.id, teardown)
        except UserError:
            pass
    await service.stop()
    await store.close()

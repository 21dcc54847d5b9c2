"""A running service, as `imagebot serve` builds it (bot.stack.open_stack), on test settings."""

from __future__ import annotations

from pathlib import Path

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

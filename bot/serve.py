"""`imagebot serve`: store, model registry, GPU worker and every enabled frontend in one event loop.

One shutdown path: SIGINT/SIGTERM (Ctrl+C) stops taking jobs, lets the running batch finish
within `[queue] shutdown_grace` seconds (else it is requeued for the next start) and closes cleanly.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from pathlib import Path

from bot import __version__
from bot.config import Config, Secrets

log = logging.getLogger("imagebot.serve")


async def serve(config: Config, secrets: Secrets, ready: asyncio.Event | None = None) -> None:
    import uvicorn

    from bot.core.service import Service
    from bot.core.store import Store
    from bot.engine.executor import LocalExecutor
    from bot.engine.registry import Registry
    from bot.frontends.web.api import create_app

    chat_frontends = enabled_chat_frontends(secrets)  # before anything starts: a missing library stops here
    store = await Store.open(config.storage.database_path())
    registry = Registry(Path(config.storage.models_dir), config.variants, config.models.rescan_seconds)
    executor = LocalExecutor(registry, config.engine, config.storage.outputs_path(),
                             allow_download=config.models.allow_download, version=f"imagebot {__version__}")
    service = Service(config, store, executor, registry)
    await service.start()

    stop = asyncio.Event()
    _on_signals(stop)
    server = None
    tasks = []
    if config.web.enabled:
        app = create_app(service, config, secrets)
        server = uvicorn.Server(uvicorn.Config(app, host=config.web.host, port=config.web.port, log_config=None,
                                               access_log=False, lifespan="off"))
        server.install_signal_handlers = lambda: None  # one shutdown path: ours
        tasks.append(asyncio.create_task(server.serve(), name="web"))
    # Chat frontends: each package's start() connects, registers its handlers and returns an object
    # whose stop() disconnects. They share this event loop and the one service.
    frontends = [await frontend.start(service, config, secrets) for frontend in chat_frontends]

    models = [e.name for e in registry.entries() if e.ready]
    log.info("serving models: %s (default %s)", ", ".join(models) or "none", config.models.default)
    if not models:
        log.warning("no models in %s: requests will be refused until one is added (see README, 'Adding models')",
                    config.storage.models_dir)
    if server is not None:
        while not server.started and not tasks[0].done():
            await asyncio.sleep(0.05)
        if tasks[0].done():
            await tasks[0]  # surfaces a bind error, for example
            raise SystemExit(f"the web server could not start on {config.web.host}:{config.web.port}")
        print(f"Image Chatbot is running: open http://{config.web.host}:{config.web.port} (Ctrl+C to stop)",
              flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        if server is not None:
            server.should_exit = True
        for frontend in reversed(frontends):
            try:
                await frontend.stop()
            except Exception:  # one frontend failing to close must not keep the others open
                log.exception("a frontend failed to stop cleanly")
        await service.stop()
        for task in tasks:
            await asyncio.gather(task, return_exceptions=True)
        await store.close()
        log.info("stopped")


# (secret, its environment variable, frontend package = the extra that installs its library, the library)
_CHAT_FRONTENDS = (("telegram_token", "TELEGRAM_TOKEN", "telegram", "telegram"),
                   ("discord_token", "DISCORD_TOKEN", "discord", "discord"))


def enabled_chat_frontends(secrets: Secrets) -> list:
    """The frontend packages whose token is set. Their libraries are optional extras, so a token
    without its library stops `serve` with the command that installs it."""
    modules = []
    for field, variable, name, library in _CHAT_FRONTENDS:
        if not getattr(secrets, field):
            continue
        try:
            modules.append(importlib.import_module(f"bot.frontends.{name}"))
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] != library:
                raise
            raise SystemExit(f"imagebot: {variable} is set, but the {name} frontend's library is not installed: "
                             f"pip install -e \".[{name}]\"") from None
    return modules


def _on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: only SIGINT, via signal.signal
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))

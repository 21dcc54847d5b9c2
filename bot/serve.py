"""`imagebot serve`: store, model registry, GPU worker and every enabled frontend in one event loop.

Start-up fails fast: the web port is bound and the state folder and database are checked before the
slow part (torch, the model load), and a problem stops `serve` with one line naming what and where.

One shutdown path: SIGINT/SIGTERM (Ctrl+C) stops taking jobs, lets the running batch finish within
`[queue] shutdown_grace` seconds (else it is requeued for the next start) and closes cleanly. Every
step after that is bounded, and a watchdog ends the process should anything still hang, so one
signal always ends it within `shutdown_grace + SHUTDOWN_MARGIN` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time

import uvicorn

from bot.config import Config, Secrets, WebConfig
from bot.stack import StartupError, Stack, open_stack

log = logging.getLogger("imagebot.serve")

FRONTEND_STOP_SECONDS = 3.0  # each chat frontend, while the running batch finishes
WEB_CLOSE_SECONDS = 2.0  # open responses (event streams, downloads) once the queue has stopped
THREAD_WAIT_SECONDS = 1.0  # threads still busy when serve() has returned (a generation stuck in a kernel)
SHUTDOWN_MARGIN = 8.0  # beyond shutdown_grace, before the watchdog ends the process


async def serve(config: Config, secrets: Secrets, ready: asyncio.Event | None = None) -> None:
    from bot.frontends.web.api import create_app

    check_secrets(secrets)
    chat_frontends = enabled_chat_frontends(secrets)  # before anything starts: a missing library stops here
    listeners = listen(config.web) if config.web.enabled else []
    try:
        stack = await open_stack(config)  # checks the state folder first, then loads torch and the engine
    except BaseException:
        for sock in listeners:
            sock.close()
        raise

    stop = asyncio.Event()
    _on_signals(stop, config.queue.shutdown_grace + SHUTDOWN_MARGIN)
    server = web = None
    frontends = []
    try:
        if listeners:
            server, web = _start_web(create_app(stack.service, config, secrets), listeners, config.web)
        # Chat frontends: each package's start() connects, registers its handlers and returns an object
        # whose stop() disconnects. They share this event loop and the one service.
        for frontend in chat_frontends:
            frontends.append(await frontend.start(stack.service, config, secrets))
        _log_models(stack, config)
        if server is not None:
            await _until_listening(server, web, config.web)
            print(f"Image Chatbot is running: open http://{config.web.host}:{config.web.port} (Ctrl+C to stop)",
                  flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        log.info("shutting down")
        await _shut_down(stack, server, web, frontends)
        log.info("stopped")


# --- start-up ------------------------------------------------------------------------------------

MIN_ADMIN_TOKEN = 16  # characters: a short admin token can be guessed over the network


def check_secrets(secrets: Secrets) -> None:
    token = secrets.admin_token
    if token is not None and len(token) < MIN_ADMIN_TOKEN:
        raise StartupError(f"IMAGEBOT_ADMIN_TOKEN is {len(token)} characters long; use at least "
                           f"{MIN_ADMIN_TOKEN} random ones, e.g. python -c 'import secrets; "
                           f"print(secrets.token_urlsafe(24))'")


def listen(web: WebConfig) -> list[socket.socket]:
    """Bind the web port now, before the slow start, and hand the sockets to uvicorn later: a port
    that is taken stops `serve` at once instead of after the model load (where uvicorn would log
    the error and leave the rest of the process running). One socket per address the host names,
    as uvicorn would bind them."""
    where = f"{web.host}:{web.port}"
    try:
        addresses = socket.getaddrinfo(web.host or None, web.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(f"cannot listen on {where}: unknown host ({error.strerror}; check [web] host)") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sockets.append(_bound_socket(family, kind, proto, address))
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise StartupError(f"cannot listen on {where}: {_bind_problem(error)}") from None
    return sockets


def _bound_socket(family: int, kind: int, proto: int, address: tuple) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart need not wait
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio: IPv4 has its own socket
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_problem(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return ("address already in use (is another imagebot or a Web UI running? "
                "set [web] port in config.toml)")
    if error.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine (set [web] host in config.toml)"
    if error.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges; set [web] port in config.toml)"
    return (error.strerror or str(error)).lower()


def _start_web(app, listeners: list[socket.socket], web: WebConfig) -> tuple[uvicorn.Server, asyncio.Task]:
    # limit_concurrency: past it uvicorn answers 503 at once instead of taking on every connection
    # a client opens; timeout_keep_alive: idle connections do not hold a slot for long; the
    # protocol closes connections that never finish a request and keeps the number open below the
    # file limit and below limit_concurrency, so that idle ones cannot bring on those 503s
    # (bot/frontends/web/connections.py); proxy_headers off: X-Forwarded-For and
    # X-Forwarded-Proto are believed only from [web] trusted_proxies, which the app checks itself.
    from bot.frontends.web.connections import ACCEPT_BATCH, Connections, connection_cap, fold_out_of_files_logs

    fold_out_of_files_logs()
    connections = Connections(connection_cap(web.max_connections, web.limit_concurrency or None, len(listeners)),
                              web.timeout_header)
    server = _WebServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                       http=connections.protocol(), backlog=ACCEPT_BATCH, proxy_headers=False,
                                       limit_concurrency=web.limit_concurrency or None,
                                       timeout_keep_alive=web.timeout_keep_alive,
                                       timeout_graceful_shutdown=WEB_CLOSE_SECONDS + 1))
    return server, asyncio.create_task(server.serve(sockets=listeners), name="web")


class _WebServer(uvicorn.Server):
    """uvicorn without its own signal handlers: SIGTERM must not close the web server before the
    running batch had its grace period (its event streams would miss the end)."""

    @contextlib.contextmanager
    def capture_signals(self):  # uvicorn >= 0.29
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


async def _until_listening(server: uvicorn.Server, web: asyncio.Task, address: WebConfig) -> None:
    while not server.started and not web.done():
        await asyncio.sleep(0.05)
    if web.done():
        await web  # surfaces what stopped it
        raise StartupError(f"the web server could not start on {address.host}:{address.port}")


def _log_models(stack: Stack, config: Config) -> None:
    models = [e.name for e in stack.registry.entries() if e.ready]
    log.info("serving models: %s (default %s)", ", ".join(models) or "none", config.models.default)
    if not models:
        log.warning("no models in %s: requests will be refused until one is added (see docs/models.md)",
                    config.storage.models_dir)


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


# --- shutdown ------------------------------------------------------------------------------------


async def _shut_down(stack: Stack, server: uvicorn.Server | None, web: asyncio.Task | None, frontends: list) -> None:
    """Chat frontends disconnect while the queue stops (the running batch gets shutdown_grace, then
    it is requeued). The web server stays up meanwhile, so event streams see the batch end and new
    jobs get a "shutting down" answer; then it closes, and the store last."""
    try:
        await asyncio.gather(stop_frontends(frontends), stack.service.stop())
    finally:
        if server is not None:
            await _close_web(server, web)
        await stack.store.close()


async def _close_web(server: uvicorn.Server, web: asyncio.Task) -> None:
    """Stop accepting, give open responses WEB_CLOSE_SECONDS, then hang up on what is left: event
    streams of jobs that will not change before the next start would otherwise stay open for good.
    Hanging up looks like a client leaving, which the app handles quietly; uvicorn's own timeout
    (a second later, as a backstop) cancels each request with a logged traceback."""
    server.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(web), WEB_CLOSE_SECONDS)
    except asyncio.TimeoutError:
        for connection in list(server.server_state.connections):
            connection.transport.close()
    await asyncio.gather(web, return_exceptions=True)


async def stop_frontends(frontends: list, seconds: float = FRONTEND_STOP_SECONDS) -> None:
    """Stop the chat frontends together; one that fails or does not stop within `seconds` is
    logged and left behind, so it keeps neither the others nor the process up."""
    if not frontends:
        return
    tasks = {asyncio.create_task(frontend.stop()): type(frontend).__name__ for frontend in frontends}
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in done:
        if task.exception() is not None:
            log.error("%s failed to stop cleanly", tasks[task], exc_info=task.exception())
    for task in pending:
        log.warning("%s did not stop within %.0f s; leaving it behind", tasks[task], seconds)
        task.cancel()


def _on_signals(stop: asyncio.Event, deadline: float) -> None:
    loop = asyncio.get_running_loop()

    def stop_soon() -> None:
        if not stop.is_set():
            start_watchdog(deadline)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop_soon)
        except (NotImplementedError, RuntimeError):  # Windows: only SIGINT, via signal.signal
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop_soon))


def start_watchdog(seconds: float) -> threading.Timer:
    """End the process after `seconds`, whatever still runs: each shutdown step is bounded, but a
    frontend that ignores cancellation or a blocked event loop would otherwise keep it alive."""

    def expire() -> None:
        log.error("shutdown took too long (over %.0f s); exiting", seconds)
        _flush()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def exit_past_busy_threads(code: int, wait: float = THREAD_WAIT_SECONDS) -> None:
    """Python joins every non-daemon thread at exit, and the generation thread is one (so is a
    thread of a library a frontend used). A generation stuck inside a kernel would keep the process
    alive after serve() returned; give such threads `wait` seconds, then end without them.
    Returns only when none is left, so a normal exit runs every cleanup as usual."""
    deadline = time.monotonic() + wait
    for thread in _busy_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = _busy_threads()
    if not busy:
        return
    if code == 0:  # after a failed start, the one line on stderr already said what matters
        log.warning("exiting without waiting for busy thread(s): %s", ", ".join(t.name for t in busy))
    _flush()
    os._exit(code)


def _busy_threads() -> list[threading.Thread]:
    current = threading.current_thread()
    return [t for t in threading.enumerate() if t is not current and not t.daemon and t.is_alive()]


def _flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said anyway
            pass

"""The `imagebot` command: generate images, inspect the model store, run the bot.

Exit codes: 0 done, 1 the machine failed (a model that will not load), 2 bad input or
configuration (one line on stderr saying what is allowed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import secrets
import sys
import time
from dataclasses import astuple
from pathlib import Path
from typing import Sequence

from bot import __version__, logs
from bot.config import Config, ConfigError, Secrets, load_config
from bot.core.errors import UserError, model_refusal
from bot.core.request import merge_options, options_from_fields, parse_prompt
from bot.core.resolve import resolve
from bot.models.errors import ModelUnavailable
from bot.remote import RemoteError

log = logging.getLogger("imagebot")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"imagebot: {message} (see imagebot {self.prog.split()[-1]} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imagebot", description="Self-hosted image-generation chat bot.")
    parser.add_argument("--config", help="config file (default: $IMAGEBOT_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--version", action="version", version=f"imagebot {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    imagine = commands.add_parser("imagine", help="generate images from a prompt",
                                  description="Generate images. The prompt may carry inline flags: "
                                  "'a fox in the snow --ar 16:9 --seed 42 --no blurry'.")
    imagine.add_argument("prompt")
    imagine.add_argument("--model", "-m")
    imagine.add_argument("--seed")
    imagine.add_argument("--steps")
    imagine.add_argument("--cfg", dest="guidance")
    size = imagine.add_mutually_exclusive_group()
    size.add_argument("--size", help="WxH, e.g. 768x512")
    size.add_argument("--ar", dest="aspect", help="aspect ratio W:H at the model's native pixel count")
    imagine.add_argument("--n", dest="count", help="number of images")
    imagine.add_argument("--negative", dest="negative_prompt")
    imagine.add_argument("--scheduler")
    imagine.add_argument("--init-image", type=Path, help="start from this image (img2img)")
    imagine.add_argument("--strength", help="img2img: how much to change the image, 0.05-1")
    imagine.add_argument("--lora", action="append", metavar="NAME:W",
                         help="apply a LoRA variant made for the model, with a weight (default 1); repeatable")
    imagine.add_argument("--refiner", help="where the model's refiner takes over, 0-0.99 of the steps (0: off)")
    imagine.add_argument("--fast", action="store_true", default=None,
                         help="the model's fast mode (an LCM-LoRA or an LCM/Turbo model): 1-8 steps, guidance 0-2")
    imagine.add_argument("-o", "--output", type=Path, help="folder for the PNGs (default: the configured outputs)")
    where = imagine.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="URL",
                       help="go through the server at URL (exit 2 when none answers); default: the configured "
                       "one ([web] host and port) when it answers, else the model is loaded here")
    where.add_argument("--local", action="store_true", help="load the model here, even when a server answers")

    commands.add_parser("data", help="dataset tools: manifests, image folders, crawling, captions (imagebot data --help)")
    commands.add_parser("train", help="offline training: scratch | finetune | evaluate (imagebot train --help)")
    serve = commands.add_parser("serve", help="run the bot: web page and API, plus Discord/Telegram when their "
                                "tokens are set")
    serve.add_argument("--host", help="address the web page listens on (default: [web] host, 127.0.0.1; "
                       "0.0.0.0 for every network: read docs/security.md first)")
    serve.add_argument("--port", type=_port, help="port of the web page (default: [web] port, 7860)")

    commands.add_parser("doctor", help="what the bot would run on: torch, device, number format, attention, "
                        "memory, models, frontends")

    models = commands.add_parser("models", help="list or inspect the model store")
    models_commands = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    models_commands.add_parser("list", help="every variant with its kind, base, status and defaults")
    show = models_commands.add_parser("show", help="everything about one variant")
    show.add_argument("name")

    users = commands.add_parser("users", help="accounts of the web page and API ([web] auth = \"password\")")
    users_commands = users.add_subparsers(dest="users_command", required=True, parser_class=_Parser)
    add = users_commands.add_parser("add", help="add a user; asks the password twice (or reads it from stdin)")
    add.add_argument("name", help="1-32 lowercase letters, digits, '.', '_' or '-'")
    add.add_argument("--admin", action="store_true", help="may use the admin routes and the Admin tab")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    remove = users_commands.add_parser("remove", help="delete a user and end their sessions")
    remove.add_argument("name")
    users_commands.add_parser("list", help="every user, and which are admins")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = _delegated_command(argv)
    if delegated is not None:
        return delegated
    args = build_parser().parse_args(argv)
    # serve says what it does (start, recovery, shutdown); the other commands only what went wrong.
    _prepare(args.verbose, logging.INFO if args.command == "serve" else logging.WARNING)
    code = _run(args)
    if args.command == "serve":
        from bot.serve import exit_past_busy_threads

        exit_past_busy_threads(code)  # a generation stuck in a kernel must not keep the process alive
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        if args.command == "imagine":
            return cmd_imagine(args, config)
        if args.command == "models":
            return cmd_models(args, config)
        if args.command == "serve":
            return cmd_serve(args, config)
        if args.command == "doctor":
            return cmd_doctor(config)
        if args.command == "users":
            return cmd_users(args, config)
    except (UserError, ConfigError) as error:
        print(f"imagebot: {error}", file=sys.stderr)
        return 2
    except RemoteError as error:
        print(f"imagebot: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("imagebot: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a model that fails to load, a broken GPU setup: say it, no traceback
        if args.verbose:
            log.exception("failed")
        print(f"imagebot: {error}", file=sys.stderr)
        return 1
    return 0


# `imagebot data ...` and `imagebot train ...` hand the rest of the command line to the offline
# tools in training/, which have their own options and --help.
_TRAIN_TOOLS = {"scratch": "training.train_scratch", "finetune": "training.finetune", "evaluate": "training.evaluate"}


def _delegated_command(argv: list[str]) -> int | None:
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        index += 2 if argv[index] == "--config" else 1
    if index >= len(argv) or argv[index] not in ("data", "train"):
        return None
    import importlib

    command, rest = argv[index], argv[index + 1:]
    _prepare("-v" in argv[:index] or "--verbose" in argv[:index], logging.WARNING)
    if command == "data":
        from training import data_cli

        return data_cli.main(rest)
    if not rest or rest[0] not in _TRAIN_TOOLS:
        print("usage: imagebot train {scratch,finetune,evaluate} [options]  (each has --help)\n"
              "  scratch   train a small model from scratch (training/train_scratch.py)\n"
              "  finetune  DreamBooth or DreamBooth-LoRA over a model in the store (training/finetune.py)\n"
              "  evaluate  side-by-side comparison grid and report (training/evaluate.py)",
              file=sys.stderr if rest else sys.stdout)
        return 2 if rest else 0
    return int(importlib.import_module(_TRAIN_TOOLS[rest[0]]).main(rest[1:]) or 0)


def _prepare(verbose: bool, level: int) -> None:
    """The process's environment and logging, set once here, before torch or an ML library loads."""
    # Idle OpenMP threads sleep instead of spinning, which keeps a CPU that also serves HTTP (or
    # runs other programs) from slowing every denoising step several-fold.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logs.setup(verbose, astuple(Secrets.from_env()), level)


def _registry(config: Config):
    from bot.models.registry import Registry

    registry = Registry(Path(config.storage.models_dir), config.variants, config.models.rescan_seconds)
    registry.scan()
    return registry


# --- serve -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    from bot.serve import serve

    config = _with_web_address(config, args.host, args.port)
    asyncio.run(serve(config, Secrets.from_env()))
    return 0


def _with_web_address(config: Config, host: str | None, port: int | None) -> Config:
    """`serve --host/--port` win over the config file's [web] host and port."""
    if host is None and port is None:
        return config
    web = dataclasses.replace(config.web, host=config.web.host if host is None else host,
                              port=config.web.port if port is None else port)
    return dataclasses.replace(config, web=web)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be a number from 1 to 65535, got {text!r}")
    return int(text)


def cmd_doctor(config: Config) -> int:
    from bot.config import Secrets
    from bot.doctor import report

    for line in report(config, Secrets.from_env()):
        print(line)
    return 0


# --- users ---------------------------------------------------------------------------------


def cmd_users(args: argparse.Namespace, config: Config) -> int:
    import asyncio

    password = _new_password(args) if args.users_command == "add" else ""
    asyncio.run(_users(args, config, password))
    if config.web.auth != "password" and args.users_command == "add":
        print("note: users can sign in once config.toml says [web] auth = \"password\"", file=sys.stderr)
    return 0


async def _users(args: argparse.Namespace, config: Config, password: str) -> None:
    from bot.core.accounts import Accounts
    from bot.core.store import Store

    store = await Store.open(config.storage.database_path())
    try:
        accounts = Accounts(store, config.web.session_days * 86400)
        if args.users_command == "add":
            account = await accounts.add(args.name, password, args.admin)
            print(f"added {account.name}{' (admin)' if account.is_admin else ''}")
        elif args.users_command == "remove":
            await accounts.remove(args.name)
            print(f"removed {args.name.strip().lower()}")
        else:
            for account in await accounts.list():
                created = time.strftime("%Y-%m-%d", time.localtime(account.created_at))
                print(f"{account.name}{'  admin' if account.is_admin else ''}  (since {created})")
    finally:
        await store.close()


def _new_password(args: argparse.Namespace) -> str:
    """The new user's password: the first line of stdin, or typed twice on the terminal (never echoed)."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UserError("password_needs_terminal")
    import getpass

    first = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Again: ") != first:
        raise UserError("passwords_differ")
    return first


# --- imagine -------------------------------------------------------------------------------


def cmd_imagine(args: argparse.Namespace, config: Config) -> int:
    """Through the server when one can be used (the configured one, or --server), else here;
    one line on stderr says which (none for --local)."""
    if args.init_image is not None and not args.init_image.is_file():
        raise UserError("init_image_missing", got=str(args.init_image))
    if args.local:
        return _imagine_here(args, config, None)
    from bot import remote

    if args.server is None and not config.web.enabled:
        return _imagine_here(args, config, "the config turns the web server off ([web] enabled); "
                             "loading the model here")
    url = remote.server_url(args.server) if args.server else remote.configured_url(config.web.host, config.web.port)
    try:
        server = remote.connect(url, config.storage.state_dir, remote.credentials_from_env())
    except remote.Unusable as why:
        if args.server:
            raise RemoteError(str(why), why.exit_code) from None
        return _imagine_here(args, config, f"{why}; loading the model here")
    try:
        return _imagine_there(args, config, server)
    finally:
        server.sign_out()


def _imagine_there(args: argparse.Namespace, config: Config, server) -> int:
    """POST /api/jobs with the command's options, follow the job, download its images."""
    from tqdm import tqdm

    started = time.perf_counter()
    body = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "model": args.model, "seed": args.seed,
            "steps": args.steps, "guidance": args.guidance, "size": args.size, "aspect": args.aspect,
            "count": args.count, "scheduler": args.scheduler, "strength": args.strength, "loras": args.lora,
            "refiner": args.refiner, "fast": args.fast}
    submitted = server.submit(body, args.init_image)
    print(f"using the server at {server.url}", file=sys.stderr)
    request = submitted.get("request") or {}
    count = int(request.get("count") or 1)
    label = f"{count} image{'s' if count > 1 else ''}"
    with tqdm(total=request.get("steps"), desc=label, unit="step", delay=2, disable=not sys.stderr.isatty()) as bar:
        def show(job: dict) -> None:
            progress = job.get("progress") or {}
            if job.get("status") == "queued" and job.get("position"):
                bar.set_description(f"{label}, waiting (place {job['position']})", refresh=False)
            elif progress.get("step") is not None:
                bar.set_description(label, refresh=False)
                if progress.get("total") and progress["total"] != bar.total:
                    bar.total = progress["total"]
                bar.update(max(0, progress["step"] - bar.n))

        job = server.follow(submitted["id"], show)
    out_dir = args.output or config.storage.outputs_path()
    seed = (job.get("request") or request).get("seed")
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{secrets.token_hex(2)}"
    images, grid = server.download(job, Path(out_dir), stem)
    for path in images:
        print(path)
    if grid is not None:
        print(grid)
    log.info("made %d image(s) on %s in %.1f s", len(images), server.url, time.perf_counter() - started)
    return 0


def _imagine_here(args: argparse.Namespace, config: Config, note: str | None) -> int:
    """The model loaded in this process; `note` (which path, and why) goes to stderr once the
    request is known to be good, so bad input stays one line."""
    inline = parse_prompt(args.prompt)
    explicit = options_from_fields(
        negative_prompt=args.negative_prompt, model=args.model, seed=args.seed, steps=args.steps,
        guidance=args.guidance, size=args.size, aspect=args.aspect, count=args.count,
        scheduler=args.scheduler, strength=args.strength, loras=args.lora, refiner=args.refiner, fast=args.fast,
        init_image=str(args.init_image) if args.init_image else None,
    )
    registry = _registry(config)
    request = resolve(merge_options(inline, explicit), registry.ready_defaults(), config.models.default,
                      config.limits, models_dir=config.storage.models_dir, unavailable=registry.unavailable(),
                      lora_bases=registry.lora_bases())
    try:
        registry.get(request.model)  # a broken variant says why before torch is even imported
    except ModelUnavailable as unavailable:
        raise model_refusal(unavailable) from None
    if note:
        print(note, file=sys.stderr)

    from tqdm import tqdm

    from bot.engine.engine import Engine
    from bot.outputs import save_result

    engine = Engine(registry, config.engine, allow_download=config.models.allow_download)
    started = time.perf_counter()
    # A bar on a terminal, once the run has taken two seconds (quick runs stay quiet).
    with tqdm(total=request.steps, desc=f"{request.count} image{'s' if request.count > 1 else ''}", unit="step",
              delay=2, disable=not sys.stderr.isatty()) as bar:
        [result] = engine.generate([request], on_progress=lambda p: bar.update(p.step - bar.n))
    out_dir = args.output or config.storage.outputs_path()
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{request.seed}-{secrets.token_hex(2)}"
    saved = save_result(result, f"imagebot {__version__}", out_dir, stem)
    for path in saved.images:
        print(path)
    if saved.grid is not None:
        print(saved.grid)
    log.info("made %d image(s) in %.1f s", len(saved.images), time.perf_counter() - started)
    return 0


# --- models --------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace, config: Config) -> int:
    registry = _registry(config)
    if args.models_command == "list":
        entries = registry.entries()
        if not entries:
            print(f"No models in {config.storage.models_dir}. See docs/models.md.")
            return 0
        rows = [("NAME", "KIND", "BASE", "STATUS", "DEFAULTS")]
        for entry in entries:
            spec = entry.spec
            rows.append((
                entry.name + (" *" if entry.name == config.models.default else ""),
                spec.kind if spec else "?",
                (spec.base or "-") if spec else "-",
                _status(entry),
                _defaults_text(spec.defaults) if spec else "-",
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        for entry in entries:
            if entry.error:
                print(f"{entry.name}: {entry.error}")
        print("* = default model")
        return 0
    entry = registry.entry(args.name)
    if entry is None:
        raise UserError("unknown_model", got=args.name, available=", ".join(e.name for e in registry.entries()) or "none")
    print(f"name:        {entry.name}{' (default)' if entry.name == config.models.default else ''}")
    print(f"status:      {_status(entry)}")
    if entry.error:
        print(f"error:       {entry.error}")
    spec = entry.spec
    if spec is not None:
        print(f"kind:        {spec.kind}")
        if spec.kind != "upscaler":
            print(f"family:      {spec.defaults.family.label}")
        print(f"folder:      {spec.folder}")
        for label, value in (("description", spec.description), ("file", spec.file), ("base", spec.base),
                             ("repo", spec.repo), ("revision", spec.revision)):
            if value:
                print(f"{label + ':':<13}{value}")
        if spec.kind == "single_file":
            print(f"arch:        {spec.arch}")
        if spec.kind == "lora":
            print(f"scale:       {spec.scale}")
        print(f"defaults:    {_defaults_text(spec.defaults)}")
        if spec.defaults.role != "text2image":
            print(f"role:        {spec.defaults.role} (does not draw from a prompt alone)")
        if spec.defaults.refiner:
            print(f"refiner:     {spec.defaults.refiner}, switch {spec.defaults.refiner_switch}")
        if spec.defaults.negative_prompt:
            print(f"negative:    {spec.defaults.negative_prompt}")
    return 0


def _status(entry) -> str:
    if entry.disabled:
        return "disabled"
    return "broken" if entry.error else "ready"


def _defaults_text(d) -> str:
    guidance = int(d.guidance) if float(d.guidance).is_integer() else d.guidance
    return f"{d.width}x{d.height}, {d.steps} steps, cfg {guidance}, {d.scheduler}"


if __name__ == "__main__":
    sys.exit(main())

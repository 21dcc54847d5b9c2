"""config.toml -> frozen dataclasses.

The file is checked strictly: an unknown key or a value of the wrong type is an error that names
the key, so a typo never silently falls back to a default. Secrets (bot tokens, the admin token)
are never read from the file, only from the environment.

Which file: `--config PATH`, else `$IMAGEBOT_CONFIG`, else `./config.toml` when it exists, else the
built-in defaults. Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import ipaddress
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping

from bot.models.variant import MODEL_NAME, VariantOverride, check_defaults


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key and what is allowed."""


@dataclass(frozen=True)
class StorageConfig:
    state_dir: str = "state"  # the database and generated images live here
    database: str = ""  # default: <state_dir>/imagebot.sqlite3
    outputs: str = ""  # default: <state_dir>/outputs
    models_dir: str = "models"  # the model store: one folder per variant, hot-loaded while running

    def database_path(self) -> Path:
        return Path(self.database or Path(self.state_dir) / "imagebot.sqlite3")

    def outputs_path(self) -> Path:
        return Path(self.outputs or Path(self.state_dir) / "outputs")


@dataclass(frozen=True)
class ModelsConfig:
    default: str = "demo"  # the variant a request without --model uses (admins change it with /model NAME)
    rescan_seconds: float = 2.0  # how often the model store is checked for new/changed variants
    allow_download: bool = True  # hub variants may be fetched on first use where online


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 1000  # characters of a prompt, flags included
    max_steps: int = 50  # denoising steps a request may ask for
    max_guidance: float = 30.0  # guidance scale (--cfg) a request may ask for
    min_side: int = 32  # the shipped demo model draws 32 px images
    max_side: int = 1024  # pixels of either side a model draws
    max_pixels: int = 1024 * 1024  # width x height a model draws
    max_images: int = 4  # images per request
    max_loras: int = 3  # LoRAs one request may apply at once (<lora:NAME:W> tags and --lora)
    max_upscaled_side: int = 2048  # the Upscale button's results (drawn in tiles, so larger than max_side)
    max_upload_bytes: int = 10 * 1024 * 1024  # an image prompt or mask, as sent
    max_upload_pixels: int = 4096 * 4096  # checked from its header, before decoding
    # Uploads waiting for a request (each expires within the hour), by their size as stored:
    max_uploads_per_user: int = 50  # per user (0 = no limit; admins have none)
    max_upload_mb_per_user: int = 500  # ... and their size as stored, in MiB
    max_uploads_per_address: int = 100  # per network address, whatever client keys it sends
    max_upload_mb_per_address: int = 1024  # ... and their size as stored, in MiB
    max_uploads: int = 500  # in all
    max_upload_mb: int = 4096  # ... and their size as stored, in MiB
    max_describes_per_minute: int = 6  # /describe, per user and per address (0 = no limit; admins have none)


@dataclass(frozen=True)
class EngineConfig:
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"  # auto: CUDA, else Apple's mps, else the CPU
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: float16 on GPUs, float32 on CPU
    attention: Literal["auto", "sdpa", "xformers"] = "auto"  # auto = PyTorch SDPA
    channels_last: bool = False  # a memory layout that speeds up convolutions on some GPUs
    compile: bool = False  # torch.compile the UNet (slow first call, faster after)
    cpu_offload: Literal["none", "model", "sequential"] = "none"  # CUDA only: trade speed for memory
    vae_tiling_pixels: int = 1024 * 1024  # decode in tiles above this many pixels (0 = never)
    max_batch: int = 4  # images per pipeline call
    # An image is bit-identical whether it ran alone or in a batch; costs some batching speed.
    # auto = on for CPU (where it is cheap), off on GPUs.
    batch_invariant: Literal["auto", "on", "off"] = "auto"
    memory_budget_gb: float = 0.0  # resident models; 0 = 80% of GPU memory, or 50% of RAM on CPU
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    # Several GPUs on this machine: one engine and one batch at a time per device, e.g.
    # ["cuda:0", "cuda:1"]; empty = the one `device`. (Several machines: [executor] kind = "ray".)
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutorConfig:
    """Where batches run: "local" (this machine's `[engine] device`/`devices`) or "ray" (Ray Serve
    replicas on a cluster; `pip install -e ".[ray]"`)."""

    kind: Literal["local", "ray"] = "local"  # "local": this machine; "ray": Ray Serve replicas
    # "local": start a Ray instance inside `imagebot serve` (one machine, several GPUs);
    # "auto": the cluster started on this machine with `ray start`; "HOST:6379": that cluster's head.
    address: str = "local"
    replicas_min: int = 1  # replicas kept running; autoscaling on queued batches between min and max
    replicas_max: int = 1  # the most replicas autoscaling starts
    gpus_per_replica: float = 1.0  # 0 = CPU replicas
    cpus_per_replica: float = 1.0  # CPU cores Ray reserves for each replica
    max_models_per_replica: int = 2  # variants a replica keeps loaded (least recently used goes first)
    max_ongoing_requests: int = 1  # batches sent to a replica at once (one runs, the rest wait there)
    models_dir: str = ""  # where replicas find models/ (a folder every node sees); "" = [storage] models_dir


@dataclass(frozen=True)
class UpscaleConfig:
    """The Upscale button: an upscaler network (if one is named), then img2img in tiles for detail."""

    model: str = ""  # an upscaler variant (kind = "upscaler") in the model store; "" = resizing only
    strength: float = 0.2  # img2img over the upscaler's result, for detail (0 = none); without one, 0.35


@dataclass(frozen=True)
class QueueConfig:
    max_queued_per_user: int = 10  # jobs waiting or running per user (admins exempt)
    max_jobs_per_hour: int = 60  # per user, 0 = no limit (admins exempt)
    # Web and API clients choose their own user key, so the address they come from is limited too.
    max_queued_per_address: int = 20  # jobs waiting or running per client address, 0 = no limit
    max_jobs_per_hour_per_address: int = 120  # per client address, 0 = no limit
    max_switch_wait: float = 60.0  # seconds a job may wait while jobs for the loaded model go first
    job_timeout: float = 600.0  # seconds one batch may take
    max_attempts: int = 3  # a job the worker crashed on this often is failed, not retried
    shutdown_grace: float = 30.0  # seconds to finish the running batch on shutdown before requeueing it
    batch_window: float = 0.1  # seconds an idle worker waits for more jobs to batch with the first


@dataclass(frozen=True)
class VariationsConfig:
    """How far variations move from their source image (img2img strength, 0.05-1)."""

    subtle: float = 0.35  # Vary (Subtle): the same picture, details redrawn
    strong: float = 0.7  # Vary (Strong), V1-V4 and Remix: the composition may change


@dataclass(frozen=True)
class ModerationConfig:
    # Words (or phrases) refused in prompts on every frontend, as whole words, ignoring case;
    # Discord's age-restricted channels are exempt.
    blocklist: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = True  # serve the page and the HTTP API
    host: str = "127.0.0.1"  # this machine only; "0.0.0.0" serves every network (docs/security.md first)
    port: int = 7860  # the port of the page and both HTTP APIs
    # Host names the page may be reached by (a request naming another Host is refused: DNS
    # rebinding). Empty = localhost, 127.0.0.1, [::1] and `host` when it names one; "*" = any.
    allowed_hosts: tuple[str, ...] = ()
    # Reverse proxies (addresses or CIDRs) whose X-Forwarded-For is believed; empty = none.
    trusted_proxies: tuple[str, ...] = ()
    max_streams_per_client: int = 8  # open event streams (GET /api/events, /api/jobs/ID/events) per client key
    max_streams_per_address: int = 32  # ... per network address, whatever keys it sends (0 = no cap)
    max_streams: int = 512  # ... and in all
    limit_concurrency: int = 1024  # connections uvicorn serves at once; more are answered 503
    timeout_keep_alive: int = 5  # seconds an idle keep-alive connection is held open
    timeout_header: float = 10.0  # seconds a connection may take to send a request's head, else it is closed
    # Open at once, and always some 128 below the open-file limit and 256 or more below
    # limit_concurrency (half of one under 512), so idle connections cannot bring on its 503s; past
    # it the oldest idle one is closed.
    max_connections: int = 4096
    # "password": only signed-in users (`imagebot users add`) may use the page and the API.
    auth: Literal["none", "password"] = "none"
    session_days: float = 30.0  # how long a sign-in lasts


@dataclass(frozen=True)
class A1111Config:
    """The AUTOMATIC1111-compatible API (`/sdapi/v1/...`) on the web server's port, over the same
    queue, for tools that already speak it (Open WebUI, SillyTavern, the webuiapi client)."""

    enabled: bool = True  # served wherever the web page is ([web] host: this machine only by default)


@dataclass(frozen=True)
class TelegramConfig:
    """The Telegram bot (runs when TELEGRAM_TOKEN is set)."""

    admins: tuple[int, ...] = ()  # Telegram user ids allowed to use admin commands
    allowed_chats: tuple[int, ...] = ()  # chat ids the bot answers in; empty = every chat
    base_url: str = ""  # Bot API server, e.g. "http://127.0.0.1:8081/bot" for a local one; "" = api.telegram.org
    base_file_url: str = ""  # its file URL ("" = derived from base_url)
    mode: Literal["polling", "webhook"] = "polling"  # polling needs no public address; webhook does
    webhook_url: str = ""  # webhook mode: the public HTTPS URL Telegram posts updates to
    webhook_listen: str = "127.0.0.1"  # webhook mode: where the bot's own HTTP server listens
    webhook_port: int = 8443  # webhook mode: the port the bot's own HTTP server listens on
    edit_interval_group: float = 3.0  # seconds between progress edits in groups
    edit_interval_private: float = 1.0  # ... and in private chats
    previews: bool = True  # show the half-made image while it is generated


@dataclass(frozen=True)
class DiscordConfig:
    """The Discord bot (runs when DISCORD_TOKEN is set)."""

    admin_users: tuple[int, ...] = ()  # user ids allowed to use admin commands
    admin_roles: tuple[int, ...] = ()  # role ids whose members are admins
    allowed_channels: tuple[int, ...] = ()  # channel ids the bot answers in; empty = every channel
    test_guild: int = 0  # sync commands to this server only (instant); 0 = globally
    edit_interval: float = 1.5  # seconds between progress edits
    previews: bool = True  # show the half-made image while it is generated
    shards: int = 0  # gateway shards in this process; 0 = as many as Discord recommends for the bot's servers


@dataclass(frozen=True)
class DescribeConfig:
    """/describe: prompts suggested for a picture by a captioning model."""

    model: str = ""  # a BLIP folder, e.g. "models/blip-base" (what `imagebot data caption` uses); "" = off
    candidates: int = 4  # prompts offered per picture
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps


@dataclass(frozen=True)
class Config:
    storage: StorageConfig = field(default_factory=StorageConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    limits: Limits = field(default_factory=Limits)
    engine: EngineConfig = field(default_factory=EngineConfig)
    upscale: UpscaleConfig = field(default_factory=UpscaleConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    variations: VariationsConfig = field(default_factory=VariationsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    a1111: A1111Config = field(default_factory=A1111Config)
    telegram: TelegramConfig = field(default_factory=TelegramConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    variants: Mapping[str, VariantOverride] = field(default_factory=dict)
    source: str = "built-in defaults"  # which file this came from, for messages


@dataclass(frozen=True)
class Secrets:
    """Tokens from the environment. repr() never shows them, so they cannot leak into logs."""

    discord_token: str | None = None
    telegram_token: str | None = None
    telegram_webhook_secret: str | None = None  # webhook mode: Telegram sends it with every update
    admin_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Secrets":
        env = os.environ if env is None else env
        return cls(
            discord_token=env.get("DISCORD_TOKEN") or None,
            telegram_token=env.get("TELEGRAM_TOKEN") or None,
            telegram_webhook_secret=env.get("TELEGRAM_WEBHOOK_SECRET") or None,
            admin_token=env.get("IMAGEBOT_ADMIN_TOKEN") or None,
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={'set' if getattr(self, f.name) else 'unset'}" for f in fields(self))
        return f"Secrets({shown})"


_SECRET_WORDS = ("token", "secret", "password")
# Keys of older versions that live elsewhere now: where to put them instead.
_MOVED = {("discord", "blocklist"): "put the words in [moderation] blocklist, which every frontend checks "
                                    "(Discord's age-restricted channels stay exempt)"}
_PATH_KEYS = {("describe", "model"), ("storage", "state_dir"), ("storage", "database"), ("storage", "outputs"), ("storage", "models_dir"),
              ("executor", "models_dir")}


def find_config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("IMAGEBOT_CONFIG"):
        return Path(os.environ["IMAGEBOT_CONFIG"])
    local = Path("config.toml")
    return local if local.is_file() else None


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load the configuration chosen by `path`, $IMAGEBOT_CONFIG or ./config.toml."""
    file = find_config_file(path)
    if file is None:
        return Config()
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{file} is a folder, not a config file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{file}: not UTF-8 text: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read {file}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{file}: not valid TOML: {error}") from None
    return config_from_dict(data, base_dir=file.resolve().parent, source=str(file))


def config_from_dict(data: Mapping[str, Any], base_dir: Path | None = None, source: str = "dict") -> Config:
    sections = {f.name: f for f in fields(Config) if f.name not in ("variants", "source")}
    built: dict[str, Any] = {"source": source}
    for key, value in data.items():
        if key == "variants":
            built["variants"] = _build_variants(value)
        elif key in sections:
            cls = typing.get_type_hints(Config)[key]
            built[key] = _build_section(cls, value, key, base_dir)
        else:
            _refuse_secrets(key, value)
            allowed = ", ".join(sorted([*sections, "variants"]))
            raise ConfigError(f"unknown section [{key}] (allowed: {allowed})")
    return Config(**built)


def _refuse_secrets(name: str, value: Any) -> None:
    keys = [name, *(f"{name}.{k}" for k in value)] if isinstance(value, dict) else [name]
    for key in keys:
        if any(word in key.rsplit(".", 1)[-1].lower() for word in _SECRET_WORDS):
            raise ConfigError(f"{key}: secrets are not read from the config file; set them in the environment "
                              "(DISCORD_TOKEN, TELEGRAM_TOKEN, IMAGEBOT_ADMIN_TOKEN)")


def _build_variants(value: Any) -> dict[str, VariantOverride]:
    if not isinstance(value, dict):
        raise ConfigError("[variants] must be a table of [variants.<name>] tables")
    out = {}
    for name, section in value.items():
        out[name] = _build_section(VariantOverride, section, f"variants.{name}", None)
    return out


def _build_section(cls: type, value: Any, prefix: str, base_dir: Path | None) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"[{prefix}] must be a table")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, item in value.items():
        name = f"{prefix}.{key}"
        if (prefix, key) in _MOVED:
            raise ConfigError(f"{name} has moved: {_MOVED[prefix, key]}")
        if key not in hints:
            _refuse_secrets(name, item)
            raise ConfigError(f"unknown key {name} (allowed: {', '.join(hints)})")
        kwargs[key] = _check_type(name, item, hints[key])
        if (prefix, key) in _PATH_KEYS and kwargs[key] and base_dir is not None:
            kwargs[key] = str(base_dir / kwargs[key])
    _check_values(prefix, kwargs)
    return cls(**kwargs)


def _check_type(name: str, value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if origin is Literal:
        choices = typing.get_args(expected)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple:  # a TOML array of one item type
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, got {type(value).__name__} {value!r}")
        item_type = typing.get_args(expected)[0]
        return tuple(_check_type(f"{name}[{i}]", item, item_type) for i, item in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(expected) if t is not type(None)]
        return _check_type(name, value, options[0])
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float) and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(f"{name} must be {_type_word(expected)}, got {type(value).__name__} {value!r}")
    return value


def _type_word(expected: Any) -> str:
    return {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}.get(
        expected, getattr(expected, "__name__", str(expected)))


def _check_values(prefix: str, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{prefix}.{key} must not be negative, got {value}")
    if prefix == "telegram" and values.get("mode") == "webhook" and not values.get("webhook_url"):
        raise ConfigError("telegram.mode = \"webhook\" needs telegram.webhook_url (the public HTTPS URL)")
    if prefix == "web":
        for entry in values.get("trusted_proxies", ()):
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"web.trusted_proxies: {entry!r} is not an address or a CIDR network") from None
    if prefix == "variations":
        for key, value in values.items():
            if not 0.05 <= value <= 1:
                raise ConfigError(f"variations.{key} must be from 0.05 to 1, got {value}")
    if prefix == "upscale":
        if values.get("strength", 0) > 1:
            raise ConfigError(f"upscale.strength must be 0 (no img2img pass) to 1, got {values['strength']}")
        if values.get("model") and not MODEL_NAME.fullmatch(values["model"]):
            raise ConfigError(f"upscale.model must be the name of an upscaler variant in the model store, "
                              f"got {values['model']!r}")
    if prefix == "web" and values.get("session_days", 1) <= 0:
        raise ConfigError("web.session_days must be more than 0")
    if prefix == "engine" and values.get("max_batch", 1) < 1:
        raise ConfigError("engine.max_batch must be at least 1")
    if prefix == "engine":
        _check_devices(values.get("devices", ()))
    if prefix == "executor":
        _check_executor(values)
    if prefix.startswith("variants."):
        try:
            check_defaults(values, prefix)
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _check_devices(devices: tuple[str, ...]) -> None:
    for device in devices:
        if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
            raise ConfigError(f"engine.devices: {device!r} is not a device; use \"cuda:0\", \"cuda:1\", ... "
                              "(or \"cpu\", \"mps\")")
    gpus = [device for device in devices if device.startswith("cuda")]
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"engine.devices lists a GPU twice: {list(devices)}; one engine per GPU")


def _check_executor(values: Mapping[str, Any]) -> None:
    low, high = values.get("replicas_min", 1), values.get("replicas_max", 1)
    if high < 1 or low > high:
        raise ConfigError(f"executor.replicas_min ({low}) and replicas_max ({high}) need 0 <= min <= max and max >= 1")
    for key in ("max_models_per_replica", "max_ongoing_requests"):
        if values.get(key, 1) < 1:
            raise ConfigError(f"executor.{key} must be at least 1")
    if not values.get("address", "local").strip():
        raise ConfigError('executor.address must be "local", "auto" or a cluster address such as "head:6379"')

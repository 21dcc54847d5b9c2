"""config.toml -> frozen dataclasses, strictly checked; secrets only from the environment (bot/config.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bot.config import (
    A1111Config,
    Config,
    ConfigError,
    EngineConfig,
    Limits,
    ModelsConfig,
    Secrets,
    StorageConfig,
    VariantOverride,
    WebConfig,
    config_from_dict,
    find_config_file,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]

FULL = """\
[storage]
state_dir = "/var/lib/imagebot"
database = "/var/lib/imagebot/db.sqlite3"
outputs = "/srv/images"
models_dir = "/srv/models"

[models]
default = "sd15"
rescan_seconds = 5
allow_download = false

[limits]
max_prompt_chars = 2000
max_steps = 80
max_guidance = 20
min_side = 128
max_side = 2048
max_pixels = 4194304
max_images = 8

[engine]
device = "cuda"
dtype = "bfloat16"
attention = "xformers"
channels_last = true
compile = true
cpu_offload = "model"
vae_tiling_pixels = 0
max_batch = 2
batch_invariant = "on"
memory_budget_gb = 10
threads = 6

[web]
enabled = false
host = "0.0.0.0"
port = 8080

[variants.demo]
steps = 10

[variants.sd21]
steps = 30
guidance = 8
width = 768
height = 768
scheduler = "euler_a"
negative_prompt = "lowres"
enabled = false
"""


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("IMAGEBOT_CONFIG", raising=False)
    for name in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "IMAGEBOT_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch, no_env) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def write(folder: Path, text: str, name: str = "config.toml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


# --- defaults and full parsing --------------------------------------------------------------


def test_defaults_without_any_file(empty_cwd):
    config = load_config()
    assert config == Config()
    assert config.source == "built-in defaults"
    assert config.storage == StorageConfig() and config.storage.state_dir == "state"
    assert config.models.default == "demo" and config.models.allow_download is True
    assert config.limits == Limits(max_prompt_chars=1000, max_steps=50, max_guidance=30.0, min_side=32,
                                   max_side=1024, max_pixels=1024 * 1024, max_images=4)
    assert config.engine.device == "auto" and config.engine.max_batch == 4
    assert (config.web.enabled, config.web.host, config.web.port) == (True, "127.0.0.1", 7860)
    assert dict(config.variants) == {}
    assert find_config_file() is None


def test_the_a1111_api_is_on_by_default_and_can_be_turned_off(tmp_path):
    assert Config().a1111 == A1111Config(enabled=True)
    assert load_config(write(tmp_path, "[a1111]\nenabled = false\n")).a1111 == A1111Config(enabled=False)
    assert load_config(REPO / "config.toml").a1111.enabled is True
    with pytest.raises(ConfigError, match=r"a1111.enabled must be true or false"):
        config_from_dict({"a1111": {"enabled": "no"}})
    with pytest.raises(ConfigError, match=r"unknown key a1111.auth \(allowed: enabled\)"):
        config_from_dict({"a1111": {"auth": "user:pass"}})


def test_config_objects_are_frozen(empty_cwd):
    config = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.max_steps = 1000  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.web = WebConfig()  # type: ignore[misc]


def test_every_key_is_parsed_and_typed(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert config.storage == StorageConfig(state_dir="/var/lib/imagebot", database="/var/lib/imagebot/db.sqlite3",
                                           outputs="/srv/images", models_dir="/srv/models")
    assert config.models == ModelsConfig(default="sd15", rescan_seconds=5.0, allow_download=False)
    assert config.limits == Limits(max_prompt_chars=2000, max_steps=80, max_guidance=20.0, min_side=128,
                                   max_side=2048, max_pixels=4194304, max_images=8)
    assert config.engine == EngineConfig(device="cuda", dtype="bfloat16", attention="xformers", channels_last=True,
                                         compile=True, cpu_offload="model", vae_tiling_pixels=0, max_batch=2,
                                         batch_invariant="on", memory_budget_gb=10.0, threads=6)
    assert config.web == WebConfig(enabled=False, host="0.0.0.0", port=8080)
    assert config.variants == {
        "demo": VariantOverride(steps=10),
        "sd21": VariantOverride(steps=30, guidance=8.0, width=768, height=768, scheduler="euler_a",
                                negative_prompt="lowres", enabled=False),
    }
    assert config.source == str(tmp_path / "config.toml")


def test_integers_become_floats_where_a_float_is_expected(tmp_path):
    config = load_config(write(tmp_path, FULL))
    for value in (config.models.rescan_seconds, config.limits.max_guidance, config.engine.memory_budget_gb,
                  config.variants["sd21"].guidance):
        assert type(value) is float
    for value in (config.limits.max_steps, config.web.port, config.engine.threads, config.variants["demo"].steps):
        assert type(value) is int


def test_a_partial_section_keeps_the_other_defaults(tmp_path):
    config = load_config(write(tmp_path, "[limits]\nmax_steps = 100\n"))
    assert config.limits == Limits(max_steps=100)
    assert config.engine == EngineConfig() and config.web == WebConfig()


def test_variant_override(tmp_path):
    config = load_config(write(tmp_path, "[variants.demo]\nsteps = 10\n"))
    assert config.variants["demo"] == VariantOverride(steps=10)
    assert config.variants["demo"].guidance is None and config.variants["demo"].enabled is True


def test_an_empty_file_gives_defaults(tmp_path):
    config = load_config(write(tmp_path, "# nothing here\n"))
    assert dataclasses.replace(config, source="built-in defaults") == Config()


# --- strictness: every mistake names its key ------------------------------------------------

# (file text, what the message must contain)
BAD = [
    # unknown sections and keys
    ("[storrage]\nstate_dir = 'x'\n", ["[storrage]", "storage"]),
    ("[limits]\nmax_step = 10\n", ["limits.max_step", "max_steps"]),
    ("[engine]\ndevices = 'cpu'\n", ["engine.devices"]),
    ("[variants.demo]\nstep = 10\n", ["variants.demo.step"]),
    ("debug = true\n", ["debug"]),
    # wrong types
    ("[limits]\nmax_steps = '50'\n", ["limits.max_steps", "whole number"]),
    ("[limits]\nmax_steps = 50.0\n", ["limits.max_steps", "whole number"]),
    ("[limits]\nmax_steps = true\n", ["limits.max_steps"]),
    ("[limits]\nmax_guidance = true\n", ["limits.max_guidance"]),
    ("[limits]\nmax_guidance = '7'\n", ["limits.max_guidance", "number"]),
    ("[models]\nrescan_seconds = false\n", ["models.rescan_seconds"]),
    ("[web]\nport = '8080'\n", ["web.port"]),
    ("[web]\nenabled = 1\n", ["web.enabled", "true or false"]),
    ("[web]\nenabled = 'yes'\n", ["web.enabled"]),
    ("[web]\nhost = 127\n", ["web.host", "string"]),
    ("[models]\ndefault = ['a']\n", ["models.default"]),
    ("[variants.demo]\nsteps = 10.5\n", ["variants.demo.steps"]),
    ("[variants.demo]\nsteps = true\n", ["variants.demo.steps"]),
    ("[variants.demo]\nguidance = true\n", ["variants.demo.guidance"]),
    ("[variants.demo]\nenabled = 'no'\n", ["variants.demo.enabled"]),
    ("storage = 5\n", ["[storage]", "table"]),
    ("variants = 5\n", ["[variants]"]),
    ("[variants]\ndemo = 5\n", ["[variants.demo]", "table"]),
    # choices
    ("[engine]\ndevice = 'gpu'\n", ["engine.device", "'auto'", "'cuda'", "'cpu'", "'gpu'"]),
    ("[engine]\ndevice = 'CUDA'\n", ["engine.device"]),
    ("[engine]\ndtype = 'fp16'\n", ["engine.dtype", "'float16'"]),
    ("[engine]\nattention = 'flash'\n", ["engine.attention"]),
    ("[engine]\ncpu_offload = true\n", ["engine.cpu_offload"]),
    ("[engine]\nbatch_invariant = false\n", ["engine.batch_invariant"]),
    # negative numbers
    ("[limits]\nmax_steps = -1\n", ["limits.max_steps", "negative"]),
    ("[limits]\nmax_guidance = -0.5\n", ["limits.max_guidance", "negative"]),
    ("[limits]\nmax_pixels = -5\n", ["limits.max_pixels"]),
    ("[models]\nrescan_seconds = -2\n", ["models.rescan_seconds"]),
    ("[engine]\nthreads = -4\n", ["engine.threads"]),
    ("[engine]\nmemory_budget_gb = -1.0\n", ["engine.memory_budget_gb"]),
    ("[web]\nport = -1\n", ["web.port"]),
    ("[variants.demo]\nsteps = -3\n", ["variants.demo.steps"]),
    ("[engine]\nmax_batch = 0\n", ["engine.max_batch", "at least 1"]),
]


@pytest.mark.parametrize("text, needles", BAD, ids=[t.replace("\n", " ").strip() for t, _ in BAD])
def test_mistakes_raise_config_error_naming_the_key(tmp_path, text, needles):
    message = config_error(text, tmp_path)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_config_from_dict_is_just_as_strict():
    with pytest.raises(ConfigError, match=r"limits\.max_steps"):
        config_from_dict({"limits": {"max_steps": "many"}})
    assert config_from_dict({"limits": {"max_steps": 7}}).limits.max_steps == 7


# --- secrets ---------------------------------------------------------------------------------

SECRET_VALUE = "MTIzNDU2Nzg5.super-secret-token-value"


@pytest.mark.parametrize("text", [
    f"[storage]\ntoken = '{SECRET_VALUE}'\n",
    f"[web]\nadmin_token = '{SECRET_VALUE}'\n",
    f"[web]\npassword = '{SECRET_VALUE}'\n",
    f"[models]\nhub_token = '{SECRET_VALUE}'\n",
    f"[engine]\nTOKEN = '{SECRET_VALUE}'\n",
    f"[variants.demo]\ntoken = '{SECRET_VALUE}'\n",
])
def test_secrets_in_a_known_section_are_refused_and_point_to_the_environment(tmp_path, text):
    message = config_error(text, tmp_path)
    for name in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "IMAGEBOT_ADMIN_TOKEN"):
        assert name in message
    assert "environment" in message
    assert SECRET_VALUE not in message


@pytest.mark.parametrize("text", [
    f"discord_token = '{SECRET_VALUE}'\n",
    f"token = '{SECRET_VALUE}'\n",
    f"[discord]\ntoken = '{SECRET_VALUE}'\n",
    f"[telegram]\nbot_token = '{SECRET_VALUE}'\n",
])
def test_secrets_anywhere_point_to_the_environment(tmp_path, text):
    message = config_error(text, tmp_path)
    for name in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "IMAGEBOT_ADMIN_TOKEN"):
        assert name in message


@pytest.mark.parametrize("text", [
    f"discord_token = '{SECRET_VALUE}'\n",
    f"[discord]\ntoken = '{SECRET_VALUE}'\n",
])
def test_secrets_anywhere_are_refused_without_echoing_them(tmp_path, text):
    assert SECRET_VALUE not in config_error(text, tmp_path)


def test_secrets_from_env():
    env = {"DISCORD_TOKEN": "d-secret-123", "TELEGRAM_TOKEN": "t-secret-456", "IMAGEBOT_ADMIN_TOKEN": "a-secret-789",
           "OTHER": "x"}
    secrets = Secrets.from_env(env)
    assert secrets == Secrets(discord_token="d-secret-123", telegram_token="t-secret-456",
                              admin_token="a-secret-789")


def test_secrets_empty_strings_are_unset():
    assert Secrets.from_env({"DISCORD_TOKEN": "", "TELEGRAM_TOKEN": "", "IMAGEBOT_ADMIN_TOKEN": ""}) == Secrets()
    assert Secrets.from_env({}) == Secrets(None, None, None)
    assert Secrets.from_env({"TELEGRAM_TOKEN": "t"}) == Secrets(telegram_token="t")


def test_secrets_from_the_process_environment(monkeypatch, no_env):
    monkeypatch.setenv("TELEGRAM_TOKEN", "from-os-environ")
    monkeypatch.setenv("DISCORD_TOKEN", "")
    assert Secrets.from_env() == Secrets(telegram_token="from-os-environ")


def test_secrets_repr_and_str_never_show_values():
    values = {"DISCORD_TOKEN": "d-secret-123", "TELEGRAM_TOKEN": "t-secret-456", "IMAGEBOT_ADMIN_TOKEN": "a-secret-789",
              "TELEGRAM_WEBHOOK_SECRET": "w-secret-000"}
    secrets = Secrets.from_env(values)
    for text in (repr(secrets), str(secrets), f"{secrets}", f"{secrets!r}", "%s" % (secrets,), repr([secrets]),
                 repr({"s": secrets})):
        for value in values.values():
            assert value not in text
    assert repr(secrets) == ("Secrets(discord_token=set, telegram_token=set, "
                             "telegram_webhook_secret=set, admin_token=set)")
    assert repr(Secrets.from_env({"TELEGRAM_TOKEN": "x"})) == \
        "Secrets(discord_token=unset, telegram_token=set, telegram_webhook_secret=unset, admin_token=unset)"


# --- reading files ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["[limits\nmax_steps = 5\n", "max_steps = \n", "[a]\nb = 1\n[a]\nb = 2\n",
                                  "x = 'unterminated\n"])
def test_invalid_toml_is_a_config_error(tmp_path, text):
    message = config_error(text, tmp_path)
    assert "not valid TOML" in message
    assert "config.toml" in message


def test_missing_file_is_a_config_error(tmp_path, no_env):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_missing_file_named_by_the_environment_is_a_config_error(tmp_path, monkeypatch, empty_cwd):
    monkeypatch.setenv("IMAGEBOT_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="gone.toml"):
        load_config()


def test_folder_as_config_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes('[web]\nhost = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError):
        load_config(path)


def test_explicit_path_beats_environment_beats_local_file(tmp_path, monkeypatch, empty_cwd):
    write(empty_cwd, "[web]\nport = 1001\n")
    from_env = write(tmp_path / "env", "[web]\nport = 1002\n")
    explicit = write(tmp_path / "explicit", "[web]\nport = 1003\n")

    assert load_config().web.port == 1001
    assert find_config_file() == Path("config.toml")

    monkeypatch.setenv("IMAGEBOT_CONFIG", str(from_env))
    assert load_config().web.port == 1002
    assert load_config(None).source == str(from_env)

    assert load_config(explicit).web.port == 1003
    assert load_config(str(explicit)).web.port == 1003
    assert find_config_file(explicit) == explicit


def test_empty_environment_variable_is_ignored(tmp_path, monkeypatch, empty_cwd):
    write(empty_cwd, "[web]\nport = 1001\n")
    monkeypatch.setenv("IMAGEBOT_CONFIG", "")
    assert load_config().web.port == 1001


def test_local_file_only_when_it_is_a_file(empty_cwd):
    (empty_cwd / "config.toml").mkdir()
    assert load_config() == Config()


def test_relative_storage_paths_resolve_against_the_config_folder(tmp_path, empty_cwd):
    folder = tmp_path / "etc" / "imagebot"
    path = write(folder, '[storage]\nstate_dir = "data"\nmodels_dir = "../models"\n'
                         'database = "db/bot.sqlite3"\noutputs = "out"\n')
    storage = load_config(path).storage
    base = folder.resolve()
    assert Path(storage.state_dir) == base / "data"
    assert Path(storage.models_dir).resolve() == (base.parent / "models").resolve()
    assert storage.database_path() == base / "db" / "bot.sqlite3"
    assert storage.outputs_path() == base / "out"
    assert Path(storage.state_dir).is_absolute()


def test_relative_paths_use_the_file_folder_also_when_chosen_relatively(tmp_path, monkeypatch, empty_cwd):
    write(empty_cwd / "conf", '[storage]\nstate_dir = "state"\n')
    storage = load_config("conf/config.toml").storage
    assert Path(storage.state_dir) == (empty_cwd / "conf" / "state").resolve()
    monkeypatch.setenv("IMAGEBOT_CONFIG", "conf/config.toml")
    assert Path(load_config().storage.state_dir) == (empty_cwd / "conf" / "state").resolve()


def test_absolute_storage_paths_are_kept(tmp_path):
    absolute = tmp_path / "elsewhere" / "state"
    path = write(tmp_path / "cfg", f'[storage]\nstate_dir = "{absolute.as_posix()}"\n')
    assert Path(load_config(path).storage.state_dir) == absolute


def test_database_and_outputs_default_under_state_dir(tmp_path):
    path = write(tmp_path, '[storage]\nstate_dir = "var"\n')
    storage = load_config(path).storage
    state = tmp_path.resolve() / "var"
    assert storage.database_path() == state / "imagebot.sqlite3"
    assert storage.outputs_path() == state / "outputs"
    assert StorageConfig().database_path() == Path("state/imagebot.sqlite3")
    assert StorageConfig().outputs_path() == Path("state/outputs")
    assert StorageConfig(state_dir="/x").outputs_path() == Path("/x/outputs")


def test_non_path_strings_are_not_resolved(tmp_path):
    config = load_config(write(tmp_path, '[models]\ndefault = "demo"\n[web]\nhost = "localhost"\n'))
    assert config.models.default == "demo" and config.web.host == "localhost"


def test_repository_config_loads():
    # The shipped config.toml must always load; it documents every setting.
    config = load_config(REPO / "config.toml")
    assert isinstance(config, Config)
    assert config.source == str(REPO / "config.toml")
    assert Path(config.storage.state_dir).is_absolute()


def test_frontend_sections_take_lists_of_ids_and_check_each_item():
    config = config_from_dict({"telegram": {"admins": [1, 2], "allowed_chats": [-1001]},
                               "discord": {"admin_roles": [5]}, "moderation": {"blocklist": ["gore"]}})
    assert config.telegram.admins == (1, 2) and config.telegram.allowed_chats == (-1001,)
    assert config.discord.admin_roles == (5,) and config.moderation.blocklist == ("gore",)
    with pytest.raises(ConfigError, match=r"telegram.admins must be a list"):
        config_from_dict({"telegram": {"admins": 12}})
    with pytest.raises(ConfigError, match=r"discord.admin_users\[1\] must be a whole number"):
        config_from_dict({"discord": {"admin_users": [1, "two"]}})
    with pytest.raises(ConfigError, match="webhook_url"):
        config_from_dict({"telegram": {"mode": "webhook"}})


def test_the_old_discord_blocklist_is_refused_with_where_it_moved():
    """One blocklist in the core now; a config that still has Discord's own must not silently lose it."""
    with pytest.raises(ConfigError, match=r"discord.blocklist has moved: put the words in \[moderation\] blocklist"):
        config_from_dict({"discord": {"blocklist": ["gore"]}})

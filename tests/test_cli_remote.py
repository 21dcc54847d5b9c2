"""`imagebot imagine` through a running server: a real `imagebot serve` on a free port (one per
module, on a tiny model), and the real command in a subprocess pointed at it by its config or by
--server. The server's [limits] differ from the command's own config, so a refusal shows where the
request was checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.cookiejar import CookieJar
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot.outputs import read_png_parameters
from tests.helpers.models import add_pipeline_variant
from tests.helpers.ports import free_port
from tests.helpers.serve_process import serve_process

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
SERVER_MAX_STEPS = 7  # the server's [limits] max_steps; the command's own config keeps the default 50


def env_for_cli(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}
    for name in ("IMAGEBOT_CONFIG", "DISCORD_TOKEN", "TELEGRAM_TOKEN", "IMAGEBOT_ADMIN_TOKEN",
                 "IMAGEBOT_USER", "IMAGEBOT_PASSWORD"):
        if name not in extra:
            env.pop(name, None)
    return env


def imagebot(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=cwd, env=env_for_cli(**env),
                          capture_output=True, text=True, timeout=timeout)


def get_json(url: str, key: str) -> dict:
    request = urllib.request.Request(url, headers={"X-Imagebot-User": key})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def running_server(root: Path, tiny_pipeline_dir: Path, web: str = ""):
    """`imagebot serve` on a free port (`web`: more of its [web] section); `cli_config` is the
    command's own config, whose [web] port names that server and whose state folder is its own
    (the client key lives there)."""
    models = root / "models"
    models.mkdir()
    add_pipeline_variant(models, "demo", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 1\n')
    port = free_port()
    config = root / "server.toml"
    config.write_text(f"[storage]\nstate_dir = '{root / 'server-state'}'\nmodels_dir = '{models}'\n\n"
                      f"[engine]\ndevice = 'cpu'\n\n[limits]\nmin_side = 32\nmax_steps = {SERVER_MAX_STEPS}\n\n"
                      f"[models]\nrescan_seconds = 0.0\n\n[web]\nport = {port}\n{web}", encoding="utf-8")
    cli = root / "cli"
    cli.mkdir()
    cli_config = cli / "config.toml"
    cli_config.write_text(f"[storage]\nstate_dir = '{cli / 'state'}'\nmodels_dir = '{models}'\n\n"
                          f"[engine]\ndevice = 'cpu'\n\n[limits]\nmin_side = 32\n\n[web]\nport = {port}\n",
                          encoding="utf-8")
    if "password" in web:
        added = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "users", "add", "alice",
                                "--password-stdin"], cwd=root, env=env_for_cli(), input=PASSWORD + "\n",
                               capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, added.stderr
    log = root / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with serve_process(config, root, env_for_cli(), url, log, start_seconds=180):
        yield SimpleNamespace(url=url, port=port, cli=cli, cli_config=cli_config,
                              outputs=root / "server-state" / "outputs", log=log)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_pipeline_dir):
    with running_server(tmp_path_factory.mktemp("remote"), tiny_pipeline_dir) as running:
        yield running


@pytest.fixture(scope="module")
def password_server(tmp_path_factory, tiny_pipeline_dir):
    """A server with [web] auth = "password" and one user, alice."""
    with running_server(tmp_path_factory.mktemp("remote-auth"), tiny_pipeline_dir, 'auth = "password"\n') as running:
        yield running


def history(server) -> list[dict]:
    """The jobs of the command's client key, as the server lists them."""
    key_file = server.cli / "state" / "cli-client-key"
    if not key_file.exists():
        return []
    return get_json(server.url + "/api/history?limit=100", key_file.read_text().strip())["jobs"]


def test_imagine_goes_through_the_configured_server(server, tmp_path):
    out = tmp_path / "out"
    before = len(history(server))
    result = imagebot(["--config", str(server.cli_config), "imagine", "a red fox --seed 7 --n 2", "--size", "32x32",
                       "-o", str(out)], server.cli)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"using the server at {server.url}"]

    # Printed and named as the local path does: two images and a grid, and the manifest.
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert len(paths) == 3, result.stdout
    stem = paths[0].name[: -len("-0.png")]
    assert "-7-" in stem
    assert [p.name for p in paths] == [f"{stem}-0.png", f"{stem}-1.png", f"{stem}-grid.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*(p.name for p in paths), f"{stem}.json"])
    manifest = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
    assert [image["parameters"]["seed"] for image in manifest["images"]] == [7, 8]
    params = read_png_parameters(paths[1])
    assert (params.prompt, params.seed, params.width, params.height, params.steps) == ("a red fox", 8, 32, 32, 1)

    # The job is the server's: in its history under the command's key, its files those bytes.
    jobs = history(server)
    assert len(jobs) == before + 1
    job = jobs[0]
    assert job["status"] == "done" and job["request"]["prompt"] == "a red fox" and job["request"]["seed"] == 7
    served = [server.outputs / image["url"].rsplit("/", 1)[1] for image in job["images"]]
    assert [p.read_bytes() for p in served] == [p.read_bytes() for p in paths[:2]]
    assert (server.outputs / job["grid"].rsplit("/", 1)[1]).read_bytes() == paths[2].read_bytes()

    # The next run is the same user to the server: its jobs share one history.
    again = imagebot(["--config", str(server.cli_config), "imagine", "a blue fox", "--server", server.url + "/",
                      "--size", "32x32", "-o", str(out)], server.cli)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines() == [f"using the server at {server.url}"]
    assert [job["request"]["prompt"] for job in history(server)[:2]] == ["a blue fox", "a red fox"]


def test_local_never_touches_the_server(server, tmp_path):
    before = sorted(p.name for p in server.outputs.iterdir()) if server.outputs.exists() else []
    jobs = len(history(server))
    out = tmp_path / "out"
    result = imagebot(["--config", str(server.cli_config), "imagine", "a green fox --seed 3", "--size", "32x32",
                       "--local", "-o", str(out)], server.cli)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # asked for: nothing to say about where it ran
    [path] = [Path(line) for line in result.stdout.splitlines()]
    assert path.parent == out and read_png_parameters(path).seed == 3
    assert len(history(server)) == jobs
    assert (sorted(p.name for p in server.outputs.iterdir()) if server.outputs.exists() else []) == before
    assert "a green fox" not in server.log.read_text(errors="replace")


def test_server_flag_to_a_dead_port_exits_2(server):
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = imagebot(["--config", str(server.cli_config), "imagine", "a fox", "--server", dead], server.cli)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"imagebot: no server answered at {dead}"]
    assert time.monotonic() - started < 60  # no model loaded


def test_server_flag_that_is_not_a_url_exits_2(server):
    result = imagebot(["--config", str(server.cli_config), "imagine", "a fox", "--server", "ftp://somewhere"],
                      server.cli)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["imagebot: --server must be a URL such as http://127.0.0.1:7860, "
                                          "got 'ftp://somewhere'"]


def test_server_and_local_together_are_refused(server):
    result = imagebot(["--config", str(server.cli_config), "imagine", "a fox", "--server", server.url, "--local"],
                      server.cli)
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["a fox", "--steps", "999"], f"imagebot: steps must be 1-{SERVER_MAX_STEPS}, got 999."),
    ([f"a fox --steps {SERVER_MAX_STEPS + 1}"], f"imagebot: steps must be 1-{SERVER_MAX_STEPS}, "
                                                f"got {SERVER_MAX_STEPS + 1}."),
    (["a fox", "--model", "nothere"], "imagebot: There is no model 'nothere'. Available: demo."),
])
def test_a_refused_request_exits_2_with_the_servers_message(server, args, message):
    jobs = len(history(server))
    result = imagebot(["--config", str(server.cli_config), "imagine", *args], server.cli)
    assert result.returncode == 2
    assert result.stdout == ""
    # The server's limit (the command's own config allows 50 steps): the server checked it.
    assert result.stderr.splitlines() == [message]
    assert len(history(server)) == jobs


# --- a server that wants a sign-in ---------------------------------------------------------


def test_signed_in_with_the_environments_name_and_password(password_server, tmp_path):
    result = imagebot(["--config", str(password_server.cli_config), "imagine", "a red fox --seed 5", "--size", "32x32",
                       "-o", str(tmp_path)], password_server.cli, IMAGEBOT_USER="alice", IMAGEBOT_PASSWORD=PASSWORD)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"using the server at {password_server.url}"]
    [path] = [Path(line) for line in result.stdout.splitlines()]
    assert read_png_parameters(path).seed == 5
    # The job is alice's: signed in as her, its history lists it, and its file is those bytes.
    session = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    body = json.dumps({"name": "alice", "password": PASSWORD}).encode()
    session.open(urllib.request.Request(password_server.url + "/api/session", data=body,
                                        headers={"Content-Type": "application/json"}), timeout=30).close()
    with session.open(password_server.url + "/api/history", timeout=10) as response:
        [job] = json.loads(response.read())["jobs"]
    assert job["request"]["prompt"] == "a red fox" and job["request"]["seed"] == 5
    served = password_server.outputs / job["images"][0]["url"].rsplit("/", 1)[1]
    assert served.read_bytes() == path.read_bytes()


def test_a_wrong_password_exits_2_with_the_servers_message(password_server):
    result = imagebot(["--config", str(password_server.cli_config), "imagine", "a fox"], password_server.cli,
                      IMAGEBOT_USER="alice", IMAGEBOT_PASSWORD="not the password")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["imagebot: Wrong user name or password."]


def test_without_credentials_the_server_flag_exits_2_and_the_default_runs_here(password_server, tmp_path):
    wanted = f"the server at {password_server.url} wants a sign-in: set IMAGEBOT_USER and IMAGEBOT_PASSWORD"
    forced = imagebot(["--config", str(password_server.cli_config), "imagine", "a fox", "--server",
                       password_server.url], password_server.cli)
    assert forced.returncode == 2 and forced.stdout == ""
    assert forced.stderr.splitlines() == [f"imagebot: {wanted}"]

    served = sorted(password_server.outputs.glob("*.png")) if password_server.outputs.exists() else []
    alone = imagebot(["--config", str(password_server.cli_config), "imagine", "a fox --seed 9", "--size", "32x32",
                      "-o", str(tmp_path)], password_server.cli)
    assert alone.returncode == 0, alone.stderr
    assert alone.stderr.splitlines() == [f"{wanted}; loading the model here"]
    [path] = [Path(line) for line in alone.stdout.splitlines()]
    assert read_png_parameters(path).seed == 9
    assert (sorted(password_server.outputs.glob("*.png")) if password_server.outputs.exists() else []) == served


# --- where the server is -------------------------------------------------------------------


@pytest.mark.parametrize("host, url", [
    ("127.0.0.1", "http://127.0.0.1:7860"),
    ("0.0.0.0", "http://127.0.0.1:7860"),  # listening everywhere: reached here on the loopback
    ("::", "http://[::1]:7860"),
    ("::1", "http://[::1]:7860"),
    ("box.lan", "http://box.lan:7860"),
])
def test_the_configured_server_address(host, url):
    from bot.remote import configured_url

    assert configured_url(host, 7860) == url


@pytest.mark.parametrize("given, url", [
    ("http://127.0.0.1:7860", "http://127.0.0.1:7860"),
    ("http://127.0.0.1:7860/", "http://127.0.0.1:7860"),
    ("box.lan:8000", "http://box.lan:8000"),
    ("https://bot.example.org/imagebot/", "https://bot.example.org/imagebot"),
])
def test_server_urls(given, url):
    from bot.remote import server_url

    assert server_url(given) == url


@pytest.mark.parametrize("given", ["ftp://box", "http://", "http://box:port", "http://box/?a=1"])
def test_bad_server_urls(given):
    from bot.remote import RemoteError, server_url

    with pytest.raises(RemoteError, match="--server must be a URL"):
        server_url(given)


def test_the_client_key_is_kept(tmp_path):
    from bot.remote import CLIENT_KEY, client_key

    key = client_key(tmp_path / "state")
    assert CLIENT_KEY.fullmatch(key) and client_key(tmp_path / "state") == key
    assert (tmp_path / "state" / "cli-client-key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "state" / "cli-client-key").write_text("not a key!\n")
    assert client_key(tmp_path / "state") != key  # a damaged file is replaced

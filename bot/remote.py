"""`imagebot imagine` through a running `imagebot serve`: a client of the bot's own HTTP API
(docs/api.md), on the standard library alone.

Going through the server puts the command line in the same line as everyone else: the server's
warm model, its queue, its limits and quotas and its blocklist apply, and the job shows in the
server's history. `connect` says whether a server can be used at an address (and why not);
`Server.submit`, `follow` and `download` queue a job, wait for it and write its images in the
files the local path writes (`{stem}-{i}.png`, `{stem}-grid.png`, `{stem}.json`).

The client key (X-Imagebot-User) is kept in the state folder (`cli-client-key`), so every run
of the command is one user to the server, as a browser is: its per-user limits count across runs
and GET /api/history lists them together. Where the server wants a sign-in ([web] auth =
"password") the name and password come from IMAGEBOT_USER and IMAGEBOT_PASSWORD.

Connections go straight to the server, past any HTTP proxy of the environment.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any, Callable

CONNECT_SECONDS = 0.5  # how long a server has to take the connection before the command runs on its own
ANSWER_SECONDS = 30.0  # how long one answer may take once connected
POLL_SECONDS = 0.25  # how often a job's state is read while it waits or runs
USER_ENV, PASSWORD_ENV = "IMAGEBOT_USER", "IMAGEBOT_PASSWORD"
CLIENT_KEY_FILE = "cli-client-key"
CLIENT_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")  # what the server takes as X-Imagebot-User
FINISHED = ("done", "failed", "cancelled")


class RemoteError(Exception):
    """The server refused the request or failed it: one line for stderr and the exit code (2: the
    request or the setup is wrong, 1: the server or the connection failed)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code


class Unusable(Exception):
    """No server that the command can use at an address, and why; `exit_code` for when the server
    was asked for by name (`--server`), otherwise the command runs on its own."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- where -------------------------------------------------------------------------------------


def configured_url(host: str, port: int) -> str:
    """The address of the server the config describes ([web] host and port); one listening on
    every network (0.0.0.0, ::) is reached on this machine's loopback."""
    host = host.strip() or "127.0.0.1"
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def server_url(text: str) -> str:
    """`--server`'s URL, checked: http(s)://host[:port][/path] (http:// when no scheme is given)."""
    raw = text.strip()
    parsed = urllib.parse.urlsplit(raw if "://" in raw else f"http://{raw}")
    try:
        parsed.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        parsed = None  # type: ignore[assignment]
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query \
            or parsed.fragment:
        raise RemoteError(f"--server must be a URL such as http://127.0.0.1:7860, got {text!r}")
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def client_key(state_dir: str | Path) -> str:
    """This machine's client key for the server, kept in the state folder (0600) so that every run
    is the same user to it; a new one for this run only where that folder cannot be written."""
    path = Path(state_dir) / CLIENT_KEY_FILE
    try:
        key = path.read_text(encoding="ascii").strip()
        if CLIENT_KEY.fullmatch(key):
            return key
    except (OSError, UnicodeDecodeError):
        pass
    key = "cli-" + secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as stream:
            stream.write(key + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
    return key


def credentials_from_env() -> tuple[str, str] | None:
    name, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    return (name, password) if name and password else None


# --- talking to it -----------------------------------------------------------------------------


class Server:
    """A server that answered, with this command's identity on it (client key, session cookie)."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.headers = {"X-Imagebot-User": key, "Accept": "application/json",
                        "User-Agent": "imagebot-cli"}
        self.cookie = ""
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: Any = None, *, data: bytes | None = None,
             content_type: str | None = None, timeout: float = ANSWER_SECONDS,
             accept: tuple[int, ...] = ()) -> tuple[bytes, Any]:
        """(the answer's bytes, its headers); RemoteError for a refusal (the server's own text)
        or a connection that fails. Error statuses in `accept` are answers like any other."""
        headers = dict(self.headers)
        if body is not None:
            data, content_type = json.dumps(body).encode("utf-8"), "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        if self.cookie:
            headers["Cookie"] = self.cookie
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.read(), response.headers
        except urllib.error.HTTPError as error:
            if error.code in accept:
                return error.read(), error.headers
            raise refusal(error) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise RemoteError(f"lost the server at {self.url}: {reason}", 1) from None

    def json(self, method: str, path: str, body: Any = None, **options: Any) -> dict[str, Any]:
        payload, _ = self.call(method, path, body, **options)
        try:
            answer = json.loads(payload)
        except ValueError:
            raise RemoteError(f"the server at {self.url} answered {method} {path} with something "
                              "other than JSON", 1) from None
        if not isinstance(answer, dict):
            raise RemoteError(f"the server at {self.url} answered {method} {path} unexpectedly", 1)
        return answer

    def sign_in(self, name: str, password: str) -> None:
        """POST /api/session; the session cookie goes with every later call."""
        _, headers = self.call("POST", "/api/session", {"name": name, "password": password})
        jar: SimpleCookie = SimpleCookie()
        for line in headers.get_all("Set-Cookie") or ():
            try:
                jar.load(line)
            except CookieError:
                continue
        self.cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())

    def sign_out(self) -> None:
        """End the session this run signed in with, if any (each run signs in afresh)."""
        if self.cookie:
            try:
                self.call("DELETE", "/api/session", timeout=5)
            except RemoteError:
                pass
            self.cookie = ""

    def upload(self, path: Path) -> str:
        """An image prompt for the job: its bytes to POST /api/uploads; returns the handle."""
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        answer = self.json("POST", "/api/uploads", data=path.read_bytes(), content_type=content_type)
        return str(answer["handle"])

    def submit(self, body: dict[str, Any], init_image: Path | None = None) -> dict[str, Any]:
        """POST /api/jobs: {id, position, eta, request} of the queued job."""
        body = {key: value for key, value in body.items() if value is not None}
        if init_image is not None:
            body["image"] = self.upload(init_image)
        return self.json("POST", "/api/jobs", body)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/api/jobs/{urllib.parse.quote(job_id, safe='')}")

    def cancel(self, job_id: str) -> None:
        try:
            self.call("DELETE", f"/api/jobs/{urllib.parse.quote(job_id, safe='')}", timeout=5)
        except RemoteError:
            pass

    def follow(self, job_id: str, on_update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read the job until it ends, handing each state to `on_update`; the finished job. A job
        that fails or is cancelled on the server is a RemoteError (exit 1). Interrupted (Ctrl-C),
        the job is cancelled on the server too."""
        try:
            while True:
                job = self.job(job_id)
                on_update(job)
                if job.get("status") in FINISHED:
                    break
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self.cancel(job_id)
            raise
        if job["status"] == "failed":
            raise RemoteError(job.get("error") or f"the job failed on the server at {self.url}", 1)
        if job["status"] == "cancelled":
            raise RemoteError(f"the job was cancelled on the server at {self.url}", 1)
        return job

    def download(self, job: dict[str, Any], out_dir: Path, stem: str) -> tuple[list[Path], Path | None]:
        """The finished job's images as the local path names them: `{stem}-{i}.png`, a grid
        `{stem}-grid.png` for several, and `{stem}.json` listing their parameters, written last."""
        from bot.files.atomic import write_atomic

        out_dir.mkdir(parents=True, exist_ok=True)

        def fetch(url: str, target: Path) -> Path:
            data, _ = self.call("GET", url, timeout=120)
            return write_atomic(target, lambda stream: stream.write(data), binary=True)

        images = [fetch(image["url"], out_dir / f"{stem}-{index}.png") for index, image in enumerate(job["images"])]
        grid = fetch(job["grid"], out_dir / f"{stem}-grid.png") if job.get("grid") else None
        write_manifest(out_dir, stem, images, grid)
        return images, grid


def refusal(error: urllib.error.HTTPError) -> RemoteError:
    """The server's own text of an error answer ({"error": text}); exit 2 for a refused request
    (4xx), 1 for a server that failed (5xx)."""
    text = ""
    try:
        answer = json.loads(error.read() or b"{}")
        if isinstance(answer, dict):
            text = str(answer.get("error") or "")
    except (ValueError, OSError):
        pass
    if not text:
        text = f"the server answered {error.code} {error.reason}"
    return RemoteError(text, 2 if 400 <= error.code < 500 else 1)


def write_manifest(out_dir: Path, stem: str, images: list[Path], grid: Path | None) -> None:
    """`{stem}.json` as the local path writes it, from the parameters the server put in the PNGs."""
    from bot.files.atomic import write_text_atomic
    from bot.outputs import read_png_parameters

    try:
        entries = [{"file": path.name, "parameters": asdict(read_png_parameters(path))} for path in images]
    except (OSError, ValueError):
        return  # not PNGs of ours (a server of another version): the images stand without it
    manifest = {"stem": stem, "images": entries, "grid": grid.name if grid else None}
    write_text_atomic(out_dir / f"{stem}.json", json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")


# --- finding one -------------------------------------------------------------------------------


def connect(url: str, state_dir: str | Path, credentials: tuple[str, str] | None) -> Server:
    """The server at `url`, ready for jobs (signed in where it wants that), or Unusable saying why
    not. A server has CONNECT_SECONDS to take the connection; once it has, its answers may take
    longer (a busy server is still the one to use)."""
    parsed = urllib.parse.urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), CONNECT_SECONDS).close()
    except OSError:
        raise Unusable(f"no server answered at {url}") from None
    server = Server(url, client_key(state_dir))
    health = _health(server)
    if health.get("status") != "ok":
        problems = "; ".join(str(problem) for problem in health.get("problems") or ()) or "unavailable"
        raise Unusable(f"the server at {url} cannot run jobs now ({problems})", 1)
    try:
        auth = server.json("GET", "/api/session").get("auth")
    except RemoteError as error:
        raise Unusable(f"the server at {url} did not say whether it wants a sign-in ({error})", error.exit_code) \
            from None
    if auth == "password":
        if credentials is None:
            raise Unusable(f"the server at {url} wants a sign-in: set {USER_ENV} and {PASSWORD_ENV}")
        server.sign_in(*credentials)  # a wrong name or password: the server's RemoteError, no fallback
    return server


def _health(server: Server) -> dict[str, Any]:
    """GET /healthz of something that took the connection: its answer (200 or 503), or Unusable
    where it is not an imagebot server."""
    try:
        payload, _ = server.call("GET", "/healthz", accept=(503,))
    except RemoteError as error:
        raise Unusable(f"no imagebot server answered at {server.url} ({error})", error.exit_code) from None
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "status" not in answer:
        raise Unusable(f"no imagebot server answered at {server.url} (GET /healthz: not its answer)")
    return answer

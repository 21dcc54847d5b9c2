"""`imagebot users add|remove|list`: the real command in a subprocess, on a real database, with the
password from stdin or typed twice on a terminal (a pseudo-terminal here)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import sqlite3
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from bot.core.passwords import verify_password

PASSWORD = "a long enough password"


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "config.toml").write_text("[web]\nauth = \"password\"\n", encoding="utf-8")
    return tmp_path


def users(folder: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "IMAGEBOT_CONFIG"}
    return subprocess.run([sys.executable, "-m", "bot.cli", "users", *args], cwd=folder, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def stored_users(folder: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(folder / "state" / "imagebot.sqlite3") as db:
        return {name: (hashed, admin) for name, hashed, admin in db.execute("SELECT name, password_hash, is_admin FROM users")}


def test_add_list_and_remove_with_the_password_from_stdin(folder):
    added = users(folder, "add", "Alice", "--admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout == "added alice (admin)\n" and PASSWORD not in added.stdout + added.stderr
    assert users(folder, "add", "bob", "--password-stdin", stdin=PASSWORD).returncode == 0
    hashed, admin = stored_users(folder)["alice"]
    assert admin == 1 and verify_password(PASSWORD, hashed) and PASSWORD not in hashed

    listed = users(folder, "list")
    assert [line.split("  (")[0] for line in listed.stdout.splitlines()] == ["alice  admin", "bob"]
    assert users(folder, "remove", "alice").stdout == "removed alice\n"
    assert list(stored_users(folder)) == ["bob"]


@pytest.mark.parametrize(("args", "stdin", "expected"), [
    (["add", "bob", "--password-stdin"], "short\n", "at least 8 characters"),
    (["add", "no spaces", "--password-stdin"], PASSWORD, "lowercase letters, digits"),
    (["add", "bob"], PASSWORD, "--password-stdin"),  # no terminal to ask on
    (["remove", "nobody"], None, "no user 'nobody'"),
])
def test_bad_input_exits_2_with_one_line_saying_what_is_allowed(folder, args, stdin, expected):
    result = users(folder, *args, stdin=stdin)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr, result.stderr


def test_a_name_is_added_once(folder):
    assert users(folder, "add", "bob", "--password-stdin", stdin=PASSWORD).returncode == 0
    again = users(folder, "add", "BOB", "--password-stdin", stdin="another password")
    assert again.returncode == 2 and "already a user 'bob'" in again.stderr


def on_terminal(folder: Path, *typed: str) -> tuple[int, str]:
    """`users add carol` on a pseudo-terminal (its controlling terminal, where getpass asks), typing
    each of `typed` when a prompt appears; the exit status and everything the terminal showed."""
    master, slave = pty.openpty()

    def take_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = {k: v for k, v in os.environ.items() if k != "IMAGEBOT_CONFIG"}
    process = subprocess.Popen([sys.executable, "-m", "bot.cli", "users", "add", "carol"], cwd=folder, env=env,
                               stdin=slave, stdout=slave, stderr=slave, preexec_fn=take_terminal)
    os.close(slave)
    shown, answers = b"", list(typed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 0.2)[0]:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 1024)
        except OSError:  # the terminal closed: the command has ended
            break
        if not chunk:
            break
        shown += chunk
        if answers and chunk.rstrip().endswith(b":"):  # a new prompt (getpass has turned echo off by then)
            os.write(master, answers.pop(0).encode() + b"\n")
    os.close(master)
    if process.poll() is None:
        process.kill()
    return process.wait(30), shown.decode(errors="replace")


def test_on_a_terminal_the_password_is_asked_twice_and_never_echoed(folder):
    code, shown = on_terminal(folder, PASSWORD, PASSWORD)
    assert code == 0, shown
    assert "Password for carol:" in shown and "Again:" in shown and "added carol" in shown
    assert PASSWORD not in shown
    assert verify_password(PASSWORD, stored_users(folder)["carol"][0])


def test_two_different_passwords_add_no_one(folder):
    code, shown = on_terminal(folder, PASSWORD, PASSWORD + "?")
    assert code == 2 and "passwords differ" in shown
    assert not (folder / "state" / "imagebot.sqlite3").exists() or stored_users(folder) == {}

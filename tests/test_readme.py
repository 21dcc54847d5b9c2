"""The README's commands are true: every `imagebot ...`, `python -m ...` and `python bench/...`
command in its shell blocks names a command that exists, with options that command accepts, and
the files it reads from the repository (`--config`, `--queries-file`) exist; `imagine` prompts
parse, with their inline flags, and name models that ship.

Each distinct command's `--help` is asked once, from a real process, and the README's options are
looked up in it. Running the commands themselves is left to the tests of each command (most need a
GPU, a token or a dataset).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# `imagebot data` and `imagebot train` hand over to training/: their second word is a command too.
TWO_WORD = {"data", "train", "models", "users"}
READS_FROM_REPO = ("--config", "--queries-file")


def shell_commands() -> list[list[str]]:
    """Every simple command in the README's ```bash blocks, as tokens (comments and quotes handled)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            command: list[str] = []
            for token in lexer:
                if token in ("&&", "||", ";", "|", "&"):
                    commands.append(command)
                    command = []
                else:
                    command.append(token)
            commands.append(command)
    return [_without_env(c) for c in commands if c]


def _without_env(command: list[str]) -> list[str]:
    while command and re.fullmatch(r"[A-Z_]+=\S*", command[0]):  # DISCORD_TOKEN=... imagebot serve
        command = command[1:]
    return command


def ours(command: list[str]) -> tuple[list[str], list[str]] | None:
    """(the program and its subcommands, the rest) for commands of this project, else None."""
    if not command:
        return None
    if command[0] == "imagebot":
        words = [w for w in command[1:] if not w.startswith("-")]
        depth = 2 if words and words[0] in TWO_WORD else 1
        head = [sys.executable, "-m", "bot.cli", *words[:depth]]
        rest = command[1:]
        for word in words[:depth]:
            rest.remove(word)
        return head, rest
    if command[:2] == ["python", "-m"] and command[2].startswith(("training.", "bot.")):
        return [sys.executable, "-m", command[2]], command[3:]
    if command[0] == "python" and len(command) > 1 and command[1].startswith("bench/"):
        return [sys.executable, command[1]], command[2:]
    return None


@lru_cache(maxsize=None)
def help_text(head: tuple[str, ...]) -> str:
    result = subprocess.run([*head, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, f"{' '.join(head[1:])} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


COMMANDS = [found for command in shell_commands() if (found := ours(command))]


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 20, COMMANDS


@pytest.mark.parametrize("head,rest", COMMANDS, ids=[" ".join(h[2:] if h[1] == "-m" else h[1:]) + " "
                                                      + " ".join(r) for h, r in COMMANDS])
def test_a_readme_command_exists_with_the_options_it_shows(head, rest):
    text = help_text(tuple(head))
    for token in rest:
        option = token.split("=", 1)[0]
        if re.fullmatch(r"--?[A-Za-z][\w-]*", option):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), \
                f"{option} is not an option of {' '.join(head[1:])}"
    for flag in READS_FROM_REPO:
        if flag in rest:
            path = rest[rest.index(flag) + 1]
            assert (ROOT / path).exists(), f"{flag} {path}: no such file in the repository"
    if head[-1] == "imagine":  # the prompt's inline flags parse, and the model ships
        from bot.core.request import parse_prompt

        parse_prompt(rest[0])
        if "--model" in rest:
            assert (ROOT / "models" / rest[rest.index("--model") + 1] / "variant.toml").is_file()

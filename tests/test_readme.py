"""The README and the pages in docs/ are true: every `imagebot ...`, `python -m ...` and
`python bench/...` command in their shell blocks names a command that exists, with options that
command accepts, and the files it reads from the repository (`--config`, `--queries-file`) exist;
`imagine` prompts parse, with their inline flags, and name models that ship. Every link between
them leads to a file and a heading that exist, the configuration reference is the one bot/config.py
generates, and the README stays a first read (300 lines at most).

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
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LINES = 300
# `imagebot data` and `imagebot train` hand over to training/: their second word is a command too.
TWO_WORD = {"data", "train", "models", "users"}
READS_FROM_REPO = ("--config", "--queries-file")


def shell_commands() -> list[list[str]]:
    """Every simple command in the pages' ```bash blocks, as tokens (comments and quotes handled)."""
    commands = []
    blocks = [block for page in PAGES for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S)]
    for block in blocks:
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


def test_the_pages_have_commands_to_check():
    assert len(COMMANDS) >= 20, COMMANDS


def test_the_readme_is_a_first_read():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_LINES, f"README.md has {lines} lines; move detail into docs/"


def headings(page: Path) -> set[str]:
    """The anchors GitHub makes of a page's headings (outside code blocks)."""
    found, in_code = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_link_leads_to_a_file_and_heading_that_exist(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} leads nowhere"
        if anchor and linked.suffix == ".md":
            assert anchor in headings(linked), f"{page.name}: {target}: no such heading in {linked.name}"


def test_the_configuration_reference_is_the_one_the_code_generates():
    from tests.helpers.config_reference import BEGIN, END, reference

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    written = page[page.index(BEGIN):page.index(END) + len(END)]
    assert written == reference(), ("docs/configuration.md's reference differs from bot/config.py: "
                                    "paste in the output of python -m tests.helpers.config_reference")


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

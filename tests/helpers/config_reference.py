"""The configuration reference in docs/configuration.md, generated from bot/config.py: every
section, every key, its default and the comment that explains it in the code.

    python -m tests.helpers.config_reference    # prints the reference (paste it into the page)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from pathlib import Path

from bot import config as config_module
from bot.config import Config

BEGIN = "<!-- config-reference: generated from bot/config.py by python -m tests.helpers.config_reference -->"
END = "<!-- end of config-reference -->"


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class's source: the comment lines above it and the one after it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"\s+(\w+): [^=]+=(.*)$", line)
        if match:
            trailing = ""
            code = match.group(2)
            if "  # " in code:
                trailing = code.split("  # ", 1)[1].strip()
            comments[match.group(1)] = " ".join(part for part in [*above, trailing] if part)
        above = []
    return comments


def shown(value: object) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False)


def reference() -> str:
    out = [BEGIN, ""]
    for section in dataclasses.fields(Config):
        if section.name in ("variants", "source"):
            continue
        cls = section.default_factory  # type: ignore[misc]
        comments = field_comments(cls)
        doc = inspect.getdoc(cls) or ""
        out.append(f"### [{section.name}]")
        out.append("")
        if doc and not doc.startswith(cls.__name__ + "("):
            out += [doc.replace("\n", " "), ""]
        out.append("| key | default | what it does |")
        out.append("|---|---|---|")
        defaults = cls()
        for item in dataclasses.fields(cls):
            meaning = comments.get(item.name, "").replace("|", "\\|")
            out.append(f"| `{item.name}` | `{shown(getattr(defaults, item.name))}` | {meaning} |")
        out.append("")
    out.append(END)
    return "\n".join(out)


if __name__ == "__main__":
    print(reference())

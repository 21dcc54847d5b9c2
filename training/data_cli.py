"""`imagebot data ...`: the dataset tools (manifests, folders of images, crawling, captioning).

Each tool module adds its own subcommands through `add_commands(subparsers)`; every subcommand
sets `func(args) -> int` (0 done, 1 failed, 2 bad input). Heavy libraries are imported inside the
commands, so `imagebot data --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

TOOL_MODULES = ("training.manifest", "training.crawl", "training.caption")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="imagebot data", description="Dataset tools: manifests (link + caption) as "
                     "JSON, CSV or TXT, folders of images, image crawling and automatic captions.")
    commands = parser.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    for name in TOOL_MODULES:
        importlib.import_module(name).add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("imagebot data: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Settings of the training scripts: a dataclass of defaults, then the run's saved config.toml (when
resuming), then a TOML file (`--config`), then `--key value` flags for any field.

    settings = Settings(TrainingConfig, what="training run")
    parser = settings.parser(prog=..., description=..., epilog=...)
    config, resume = settings.parse(parser.parse_args(argv))

Every field of the dataclass is a flag (`--max-steps 500`, also spelled `--max_steps=500` as in
diffusers' example scripts); a bare boolean flag means true. Lists are comma-separated on the command
line and TOML arrays in files. A field typed `X | None` stays None (its "not set") unless given. Bad
values raise SettingsError naming the key and what is allowed. A script without checkpoints
(`resumable=False`, e.g. training.evaluate) has no --resume.
"""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import argparse
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A bad setting; the message names the key and what is allowed."""


def scalar(kind: type, value: Any, from_text: bool) -> Any:
    """Parse (command line) or check (TOML) one value of a scalar field type."""
    if from_text:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        return kind(value.strip()) if kind is not str else value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError
    return value


def optional_of(kind: Any) -> Any:
    """X for a field typed `X | None` (None stands for "not set": the field's default), else None."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        return next(arg for arg in args if arg is not type(None))
    return None


def list_example(item: type) -> str:
    return {int: "0,1,2", float: "2.0,3.5"}.get(item, "a,b")


def describe(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return f"a list of {typing.get_args(kind)[0].__name__} (on the command line: comma-separated)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


class Settings(Generic[T]):
    """Reads one settings dataclass from its defaults, files and flags."""

    def __init__(self, cls: Callable[..., T], what: str, special: dict[str, tuple[str, Any]] | None = None,
                 hidden: tuple[str, ...] = (), resumable: bool = True) -> None:
        """`special` maps a field to a word accepted besides its type and the value it stands for
        (e.g. {"resolution": ("auto", 0)}); `hidden` fields get no generic flag (the script adds its own).
        A `resumable` script has an `output_dir` field and a checkpoint there to continue (--resume)."""
        self.cls = cls
        self.schema = typing.get_type_hints(cls)
        self.what = what
        self.special = special or {}
        self.hidden = hidden
        self.resumable = resumable

    def convert(self, key: str, value: Any, from_text: bool) -> Any:
        """Check (TOML) or parse (command line) one value against its field's type."""
        if key not in self.schema:
            raise SettingsError(f"unknown setting {key!r}; settings are: {', '.join(self.schema)}")
        if key in self.special and value == self.special[key][0]:
            return self.special[key][1]
        kind = optional_of(self.schema[key]) or self.schema[key]
        try:
            if typing.get_origin(kind) is tuple:
                item = typing.get_args(kind)[0]
                if from_text:
                    value = [v.strip() for v in value.split(",") if v.strip()]
                if not isinstance(value, (list, tuple)):
                    raise TypeError
                return tuple(scalar(item, v, from_text) for v in value)
            return scalar(kind, value, from_text)
        except (TypeError, ValueError):
            if from_text and typing.get_origin(kind) is tuple:
                raise SettingsError(f"--{key.replace('_', '-')} takes a comma-separated list, e.g. "
                                    f"{list_example(typing.get_args(kind)[0])}; got {value!r}") from None
            allowed = describe(kind) + (f' or "{self.special[key][0]}"' if key in self.special else "")
            raise SettingsError(f"{key} must be {allowed}, got {value!r}") from None

    def read(self, path: str | Path, base: T) -> T:
        """`base` with the settings of a TOML file applied."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise SettingsError(f"cannot read config {path}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"{path} is not valid TOML: {error}") from None
        try:
            return replace(base, **{k: self.convert(k, v, from_text=False) for k, v in data.items()})
        except SettingsError as error:
            raise SettingsError(f"{path}: {error}") from None

    def parser(self, **options: Any) -> argparse.ArgumentParser:
        """An argument parser with --config, --resume (if resumable) and one flag per field."""
        parser = argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter, **options)
        parser.add_argument("--config", type=Path, help="TOML file with settings")
        if self.resumable:
            parser.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                                help="continue from a checkpoint (default: <output_dir>/checkpoint.pt)")
        for f in fields(self.cls):
            if f.name in self.hidden:
                continue
            names = ["--" + f.name.replace("_", "-")] + (["--" + f.name] if "_" in f.name else [])
            # A bare boolean flag means true, as in diffusers' example command lines (--with_prior_preservation).
            extra = {"nargs": "?", "const": "true"} if self.schema[f.name] is bool else {}
            parser.add_argument(*names, dest=f.name, metavar=f.name.split("_")[-1].upper(),
                                help=f"default: {f.default!r}" if f.default != () else "default: none", **extra)
        return parser

    def parse(self, args: argparse.Namespace, check: Callable[[T], str | None] | None = None) -> tuple[T, Path | None]:
        """The run's settings and the checkpoint to resume from (None: a fresh run). `check` says
        what is wrong with the settings themselves, or None."""
        flags = {k: v for k, v in vars(args).items() if k in self.schema and v is not None}
        config = self.cls()
        resume: Path | None = None
        if getattr(args, "resume", None):
            if args.resume == "auto":
                output_dir = flags.get("output_dir")
                if output_dir is None and args.config:
                    output_dir = self.read(args.config, config).output_dir
                resume = Path(output_dir or config.output_dir) / "checkpoint.pt"
            else:
                resume = Path(args.resume)
            if not resume.is_file():
                raise SettingsError(f"--resume: no checkpoint at {resume}")
            if (resume.parent / "config.toml").is_file():
                config = self.read(resume.parent / "config.toml", config)
            config = replace(config, output_dir=str(resume.parent))
        if args.config:
            config = self.read(args.config, config)
        config = replace(config, **{k: self.convert(k, v, from_text=True) for k, v in flags.items()})
        if resume is not None and Path(config.output_dir).resolve() != resume.parent.resolve():
            raise SettingsError("--resume continues in the checkpoint's own folder; leave --output-dir out")
        problem = check(config) if check else None
        if problem:
            raise SettingsError(problem)
        if self.resumable and resume is None and (Path(config.output_dir) / "checkpoint.pt").exists():
            raise SettingsError(f"{config.output_dir} already holds a {self.what}: continue it with --resume, "
                                "or pick another --output-dir (or delete that folder) to start over")
        return config, resume

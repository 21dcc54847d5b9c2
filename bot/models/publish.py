"""Publish a variant into the model store (`models/<name>/`) without the bot ever seeing half of it.

    publish_variant("models", "demo", lambda folder: pipe.save_pretrained(folder),
                    {"steps": 20, "guidance": 3.0, "width": 32, "height": 32, "scheduler": "dpm++"},
                    "shapes on colours, trained from scratch")

How it stays atomic. A running bot rescans `models/` every few seconds (`Registry.scan()`): it
skips names starting with "." and folders without `variant.toml`, then reads `variant.toml`,
`model_index.json` and `unet/config.json` and fingerprints every file; the engine loads the files
later. So:

1. Everything is written into a staging folder `models/.<name>.tmp-XXXXXXXX` (hidden: the
   registry ignores it): the files (the caller's `write(folder)`, e.g. `save_pretrained`), then
   `variant.toml` last (temp file + `os.replace`). The staged folder is checked with the
   registry's own parser and fsynced.
2. It is published by renaming whole folders (same file system, so each rename is atomic):
   - new variant: `rename(staging, models/<name>)`. A scan sees either no folder or the complete
     one, variant.toml included; never the variant before its variant.toml exists.
   - replacing a variant, Linux: `renameat2(RENAME_EXCHANGE)` swaps the two folders in one step.
     A scan sees the complete old variant or the complete new one, never a mix, never a gap.
     The old folder, now under the hidden staging name, is deleted afterwards.
   - replacing a variant elsewhere (macOS, Windows, file systems without RENAME_EXCHANGE): the
     old folder is renamed aside to `models/.<name>.old-XXXXXXXX`, then the staging folder in.
     A scan between the two renames sees the variant absent for that instant (it reports it
     removed, then added again): never half-written, but a request in that instant can get
     "unknown model".
3. A loader that was already reading the old folder when the swap happened may end up with some
   old and some new files. The fingerprint changes with the swap, so the engine's next
   `refresh()` reloads the variant from the new folder. (Open files stay readable on POSIX.)

A crash leaves at most a hidden `.<name>.tmp-*` / `.<name>.old-*` folder, which the registry
ignores; delete it by hand. Two publications of the same name at once are not supported (the
last rename wins, and the loser's staging folder may be left behind).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from bot.files.atomic import fsync_dir, fsync_file, write_text_atomic
from bot.files.toml_writer import to_toml
from bot.models.spec import VARIANT_FILE, read_variant
from bot.models.variant import MODEL_NAME

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _checkpoint(step: str, name: str) -> None:
    """Called between the steps of a publication; tests replace it to look at the store midway."""


def publish_variant(
    models_dir: str | Path,
    name: str,
    write: Callable[[Path], None],
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
    fields: Mapping[str, Any] | None = None,
) -> Path:
    """Publish the variant `models_dir/name`, whose files `write(folder)` writes, and return its folder.

    `defaults` becomes variant.toml's [defaults] (steps, guidance, width, height, scheduler,
    negative_prompt). `fields` adds or replaces top-level keys of variant.toml: by default the
    variant is a diffusers pipeline folder; another kind, e.g. {"kind": "lora", "base": "demo",
    "file": "pytorch_lora_weights.safetensors"}, has `write` put that kind's files in the folder.
    An existing variant of that name is replaced (see the module docstring for what a concurrently
    scanning registry can observe: never a half-written variant).
    """
    if not MODEL_NAME.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: letters, digits, '.', '_', '-', up to 64 "
                         "characters, starting with a letter or digit")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / name
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"{final} exists and is not a folder")

    staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=models_dir))
    try:
        write(staging)
        _checkpoint("weights_staged", name)
        variant: dict[str, Any] = {"kind": "pipeline", **(fields or {})}
        if description:
            variant["description"] = description
        if defaults:
            variant["defaults"] = {k: v for k, v in defaults.items() if v is not None}
        write_text_atomic(staging / VARIANT_FILE, to_toml(variant))
        read_variant(staging)  # the registry's own checks, before anything is published
        _make_readable(staging)
        _fsync_tree(staging)
        _checkpoint("variant_staged", name)
        _publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(models_dir)
    _checkpoint("published", name)
    return final


def _publish(staging: Path, final: Path) -> None:
    if not final.exists():
        try:
            os.rename(staging, final)
            return
        except OSError as error:  # appeared in the meantime: replace it below
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                raise
    if _exchange(staging, final):
        _checkpoint("swapped", final.name)
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old variant
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.rmdir(aside)  # only the unique name was wanted
    os.rename(final, aside)
    _checkpoint("moved_aside", final.name)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(aside, final)  # put the old variant back
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two folders (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 (musl, old systems)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # kernel or file system without the flag
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


# --- the staged folder -------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_readable(folder: Path) -> None:
    """mkdtemp makes 0700 folders and safetensors 0600 files; give them the usual permissions, since
    other programs (a web UI, ComfyUI) may read the model store too."""
    if os.name != "posix":
        return
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def _fsync_tree(folder: Path) -> None:
    """Flush the staged files before they are published (a crash must not publish empty files)."""
    for root, _, files in os.walk(folder):
        for f in files:
            fsync_file(Path(root, f))
        fsync_dir(Path(root))

"""Files that readers see whole or not at all.

Everything is written to a temp file beside the target, flushed to disk, then renamed over it.
Beside, because a rename is atomic only within one file system; named `.<name>.<random>.tmp`, so
scanners that skip dot files pass over it and concurrent writers of one target never share one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import IO, Callable


def write_atomic(path: str | Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call `write(stream)` on a temp file beside `path`, then put it in place; return `path`.

    Readers see the old file or the complete new one, and a failure leaves no temp file. Text
    streams are UTF-8 with no newline translation (CSV writes its own line ends).
    """

    def write_stream(tmp: Path) -> None:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="") as stream:
            write(stream)

    return write_file_atomic(path, write_stream)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda stream: stream.write(text))


def write_file_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """As write_atomic, for writers that take a file name rather than a stream (safetensors)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # Created 0o666 less the umask, as any new file, so other programs (a web server, ComfyUI)
    # can read the result; remembered because some writers recreate the file 0600.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        mode = tmp.stat().st_mode & 0o777
        write(tmp)
        os.chmod(tmp, mode)
        # Without fsync a power cut after the rename can leave an empty file under the final
        # name on some file systems (ext4 delalloc).
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable. Best effort: not possible on Windows, and a failure here
    cannot corrupt anything."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

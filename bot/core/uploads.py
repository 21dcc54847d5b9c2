"""Images users send: checked before decoding, normalised, and kept with the job that uses them.

An upload is untrusted bytes from a stranger. Its size in bytes is checked first, then its header
alone is read for the format and the pixel count, so a small file that would decode into gigabytes
(a decompression bomb) is refused before any pixel is decoded. What passes is decoded once,
turned upright by its EXIF orientation and re-encoded as a plain PNG: camera metadata (GPS
position, device) never reaches the disk.

Kept uploads live in `<outputs>/uploads/` under a random name (the handle). A job records the
file it uses in its request; an upload no job took is removed after `UNUSED_SECONDS`, and one a
refused request brought is removed at once.
"""

from __future__ import annotations

import io
import os
import shutil
from fractions import Fraction
import re
import secrets
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from bot.core.errors import UserError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what Pillow reads safely and chats send
HANDLE = re.compile(r"^[0-9a-f]{32}$")
UNUSED_SECONDS = 3600.0  # an upload handle nobody used within this long is removed
FOLDER = "uploads"
MAX_WAITING = 500  # uploads kept for later requests at once (each expires after UNUSED_SECONDS)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_pixels: int


def read_image(data: bytes, limits: UploadLimits, what: str = "image") -> Image.Image:
    """Check and decode an uploaded image; a UserError says what is allowed.

    `what` is "image" or "mask" (for the messages)."""
    if not data:
        raise UserError("upload_empty", what=what)
    if len(data) > limits.max_bytes:
        raise UserError("upload_too_large", what=what, got=_mib(len(data)), limit=_mib(limits.max_bytes))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own guard, far above any sane limit, fires while reading the header.
        counted = re.search(r"\((\d+) pixels\)", str(error))
        raise UserError("upload_too_many_pixels", what=what, size=counted.group(1) if counted else "too many",
                        limit=limits.max_pixels) from None
    except (OSError, SyntaxError, ValueError):
        raise UserError("upload_not_image", what=what, formats=", ".join(FORMATS)) from None
    with opened:
        if opened.format not in FORMATS:
            raise UserError("upload_not_image", what=what, formats=", ".join(FORMATS))
        width, height = opened.size
        if width < 1 or height < 1 or width * height > limits.max_pixels:
            raise UserError("upload_too_many_pixels", what=what, size=f"{width}x{height}", limit=limits.max_pixels)
        try:
            opened.seek(0)  # the first frame of an animation
            upright = ImageOps.exif_transpose(opened)
            # Alpha over white: a transparent background is white paper, not black.
            if upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
                rgba = upright.convert("RGBA")
                image = Image.new("RGB", rgba.size, "white")
                image.paste(rgba, mask=rgba.getchannel("A"))
            else:
                image = upright.convert("RGB")
        except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt pixel data
            raise UserError("upload_not_image", what=what, formats=", ".join(FORMATS)) from error
    image.info = {}  # nothing of the original's metadata travels on
    return image


def aspect_of(image_size: tuple[int, int]) -> tuple[int, int]:
    """The image's shape as a ratio the request understands, within 1:4..4:1."""
    width, height = image_size
    # Two small integers close to the ratio (the resolver keeps the model's pixel count).
    ratio = min(Fraction(4), max(Fraction(1, 4), Fraction(width, height))).limit_denominator(64)
    return ratio.numerator, ratio.denominator


class UploadStore:
    """Uploaded images on disk under random names, removed when no job took them."""

    def __init__(self, outputs: Path, limits: UploadLimits) -> None:
        self.folder = Path(outputs) / FOLDER
        self.limits = limits

    def save(self, data: bytes, what: str = "image") -> str:
        """Check, normalise and keep an image; returns its handle. CPU work: run it off the event loop."""
        image = read_image(data, self.limits, what)
        if what == "mask":
            image = image.convert("L")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sweep()
        if sum(1 for p in self.folder.glob("*.png") if not p.name.startswith("job-")) >= MAX_WAITING:
            raise UserError("uploads_full")  # strangers must not fill the disk with images nobody uses
        handle = secrets.token_hex(16)
        partial = self.folder / f".{handle}.tmp"
        image.save(partial, format="PNG")
        partial.replace(self.path(handle))
        return handle

    def path(self, handle: str) -> Path:
        return self.folder / f"{handle}.png"

    def find(self, handle: object, what: str = "image") -> Path:
        """The file of a handle the caller holds; a UserError when it is unknown or expired."""
        if not isinstance(handle, str) or not HANDLE.fullmatch(handle.strip().lower()):
            raise UserError("upload_unknown", what=what)
        path = self.path(handle.strip().lower())
        if not path.is_file():
            raise UserError("upload_unknown", what=what)
        return path

    def size_of(self, path: Path) -> tuple[int, int]:
        with Image.open(path) as image:
            return image.size

    def remove(self, path: str | Path | None) -> None:
        if path is not None and Path(path).parent == self.folder:
            Path(path).unlink(missing_ok=True)

    def sweep(self, now: float | None = None, used: set[str] | None = None) -> int:
        """Remove uploads older than UNUSED_SECONDS that no job uses (`used`: file names jobs hold;
        None = jobs keep their own copies, so any old handle is unused). Returns how many went."""
        now = time.time() if now is None else now
        removed = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.iterdir():
            if path.name.startswith("job-") or (used is not None and path.name in used):
                continue
            try:
                if now - path.stat().st_mtime > UNUSED_SECONDS:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def keep_for_job(self, path: Path) -> Path:
        """A copy of an upload that belongs to one job (out of the sweep's reach); a hard link, so
        it costs no space. The handle stays usable for another request until it expires."""
        kept = self.folder / f"job-{secrets.token_hex(16)}.png"
        try:
            os.link(path, kept)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, kept)
        return kept


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"

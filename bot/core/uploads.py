"""Images users send: checked before decoding, normalised, and kept with the job that uses them.

An upload is untrusted bytes from a stranger. Its size in bytes is checked first, then its header
alone is read for the format and the pixel count, so a small file that would decode into gigabytes
(a decompression bomb) is refused before any pixel is decoded. What passes is decoded once,
turned upright by its EXIF orientation and re-encoded as a plain PNG: camera metadata (GPS
position, device) never reaches the disk.

Kept uploads live in `<outputs>/uploads/` under a random name (the handle). A JPEG stays a JPEG
(re-encoded at high quality, far smaller than the PNG of the same pixels); anything else becomes a
PNG. A job records its own copy of the file in its request (`job-...`); a handle is removed after
`UNUSED_SECONDS` whether a job used it or not, one a refused request brought is removed at once,
and a cancelled job's copy goes with it. How many handles each client and address may hold, by
their size as stored, is bot/core/upload_quota.py's to say.
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
from bot.core.upload_quota import UploadQuota, UploadQuotaLimits

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # what Pillow reads safely and chats send
HANDLE = re.compile(r"^[0-9a-f]{32}$")
UNUSED_SECONDS = 3600.0  # an upload handle nobody used within this long is removed
SWEEP_SECONDS = 60.0  # how often saving an upload looks for expired ones
FOLDER = "uploads"
JOB_PREFIX = "job-"  # a job's own copy: out of the sweep's reach, removed with a cancelled job
SUFFIXES = (".png", ".jpg")
JPEG_QUALITY = 95  # a re-encoded JPEG upload: no visible loss at the sizes the models draw


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_pixels: int


def read_image(data: bytes, limits: UploadLimits, what: str = "image") -> Image.Image:
    """Check and decode an uploaded image; a UserError says what is allowed.

    `what` is "image" or "mask" (for the messages)."""
    return read_image_and_format(data, limits, what)[0]


def read_image_and_format(data: bytes, limits: UploadLimits, what: str = "image") -> tuple[Image.Image, str]:
    """`read_image`, and the format the bytes came in ("PNG", "JPEG", ...)."""
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
        source_format = opened.format
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
    return image, source_format


def aspect_of(image_size: tuple[int, int]) -> tuple[int, int]:
    """The image's shape as a ratio the request understands, within 1:4..4:1."""
    width, height = image_size
    # Two small integers close to the ratio (the resolver keeps the model's pixel count).
    ratio = min(Fraction(4), max(Fraction(1, 4), Fraction(width, height))).limit_denominator(64)
    return ratio.numerator, ratio.denominator


class UploadStore:
    """Uploaded images on disk under random names, removed when they expire or their job is cancelled."""

    def __init__(self, outputs: Path, limits: UploadLimits, quota: UploadQuotaLimits = UploadQuotaLimits()) -> None:
        self.folder = Path(outputs) / FOLDER
        self.limits = limits
        self.quota = UploadQuota(quota)
        self._next_sweep = 0.0
        for path in self._handles():  # kept before a restart: they count in the total until they expire
            self.quota.add(path.stem, (), path.stat().st_size)

    def save(self, data: bytes, what: str = "image", owners: tuple[str, ...] = ()) -> str:
        """Check, normalise and keep an image for later requests; returns its handle. `owners`: the
        user and address keys whose shares it counts in (none for an admin). CPU work: run it off
        the event loop."""
        encoded, suffix = self.encode(data, what)
        if time.monotonic() >= self._next_sweep:  # a walk over the folder: once a minute, not per upload
            self.sweep()
            self._next_sweep = time.monotonic() + SWEEP_SECONDS
        self.quota.check(owners, len(encoded))  # strangers must not fill the disk with images nobody uses
        handle = secrets.token_hex(16)
        self._write(self.folder / f"{handle}{suffix}", encoded)
        self.quota.add(handle, owners, len(encoded))
        return handle

    def save_for_job(self, data: bytes, what: str = "image") -> Path:
        """An image sent with its request: kept at once as the job's own file, with no handle."""
        encoded, suffix = self.encode(data, what)
        path = self.folder / f"{JOB_PREFIX}{secrets.token_hex(16)}{suffix}"
        self._write(path, encoded)
        return path

    def encode(self, data: bytes, what: str) -> tuple[bytes, str]:
        """The checked image as it will be stored: its bytes and file suffix. A mask is grey levels
        in a PNG (exact edges); a JPEG photo stays a JPEG; anything else becomes a PNG."""
        image, source_format = read_image_and_format(data, self.limits, what)
        out = io.BytesIO()
        if what == "mask":
            image.convert("L").save(out, format="PNG")
            return out.getvalue(), ".png"
        if source_format == "JPEG":
            image.save(out, format="JPEG", quality=JPEG_QUALITY)
            return out.getvalue(), ".jpg"
        image.save(out, format="PNG")
        return out.getvalue(), ".png"

    def _write(self, path: Path, encoded: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{path.name}.tmp"
        partial.write_bytes(encoded)
        partial.replace(path)

    def find(self, handle: object, what: str = "image") -> Path:
        """The file of a handle the caller holds; a UserError when it is unknown or expired."""
        if not isinstance(handle, str) or not HANDLE.fullmatch(handle.strip().lower()):
            raise UserError("upload_unknown", what=what)
        for suffix in SUFFIXES:
            path = self.folder / f"{handle.strip().lower()}{suffix}"
            if path.is_file():
                return path
        raise UserError("upload_unknown", what=what)

    def size_of(self, path: Path) -> tuple[int, int]:
        with Image.open(path) as image:
            return image.size

    def remove(self, path: str | Path | None) -> None:
        """Remove an upload (a handle's file or a job's copy); paths outside the folder are left alone."""
        if path is not None and Path(path).parent == self.folder:
            Path(path).unlink(missing_ok=True)
            self.quota.drop(Path(path).stem)

    def sweep(self, now: float | None = None) -> int:
        """Remove handles older than UNUSED_SECONDS (jobs keep their own copies). Returns how many went."""
        now = time.time() if now is None else now
        removed = 0
        for path in self._handles():
            try:
                if now - path.stat().st_mtime > UNUSED_SECONDS:
                    path.unlink()
                    self.quota.drop(path.stem)
                    removed += 1
            except FileNotFoundError:
                self.quota.drop(path.stem)
        return removed

    def _handles(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [path for path in self.folder.iterdir()
                if path.suffix in SUFFIXES and not path.name.startswith((JOB_PREFIX, "."))]

    def keep_for_job(self, path: Path) -> Path:
        """A copy of an upload that belongs to one job (out of the sweep's reach); a hard link, so
        it costs no space. The handle stays usable for another request until it expires."""
        kept = self.folder / f"{JOB_PREFIX}{secrets.token_hex(16)}{path.suffix}"
        try:
            os.link(path, kept)
        except FileNotFoundError:
            raise UserError("upload_unknown", what="image") from None
        except OSError:  # a file system without hard links
            shutil.copyfile(path, kept)
        return kept

    def discard_job_files(self, *paths: str | Path | None) -> None:
        """A cancelled job's own copies of its uploads: nothing will read them again."""
        for path in paths:
            if path is not None and Path(path).name.startswith(JOB_PREFIX):
                self.remove(path)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"

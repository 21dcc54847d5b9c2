"""Pictures users send: image prompts and masks kept with their job, uploads kept for a later
submit, and /describe (the prompts a captioning model suggests for a picture).

Each picture is checked before it is decoded and stored by `UploadStore` (bot/core/uploads.py);
this part applies the rules around it: a banned user's picture is refused before any of that, a
request that is refused leaves no copy behind, and /describe is rate-limited per user and address.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from bot.core.bans import Bans
from bot.core.errors import UserError
from bot.core.jobs import Origin
from bot.core.rates import RateLimit
from bot.core.request import RequestOptions
from bot.core.uploads import UploadStore, aspect_of, read_image


class Pictures:
    def __init__(self, uploads: UploadStore, bans: Bans, describes: RateLimit) -> None:
        self.uploads = uploads
        self.bans = bans
        self.describes = describes
        self.describer: Callable[[Any], list[str]] | None = None  # picture -> prompts; set when configured

    async def upload(self, data: bytes, origin: Origin, what: str = "image") -> str:
        """Check and keep an image (or mask) for a later `submit`; returns its handle. It counts in
        the uploader's and their address's shares until it expires (admins have none)."""
        self.bans.check(origin)
        owners = () if origin.is_admin else tuple(key for key in (origin.user_key, origin.address_key) if key)
        return await asyncio.to_thread(self.uploads.save, data, what, owners)

    async def describe(self, image: bytes | str, origin: Origin) -> list[str]:
        """Prompts the configured captioning model suggests for a picture (its bytes or an upload handle)."""
        if self.describer is None:  # only an admin is told how to set it up
            raise UserError("describe_not_configured_admin" if origin.is_admin else "describe_not_configured")
        self.bans.check(origin)
        if not origin.is_admin:
            self.describes.take(origin.user_key, origin.address_key)
        if isinstance(image, (bytes, bytearray)):
            picture = await asyncio.to_thread(read_image, bytes(image), self.uploads.limits)
        else:
            picture = await asyncio.to_thread(_open_rgb, self.uploads.find(image))
        prompts = await asyncio.to_thread(self.describer, picture)
        if not prompts:
            raise UserError("describe_nothing")
        return prompts

    @contextlib.asynccontextmanager
    async def attached(self, options: RequestOptions, image: bytes | str | None,
                       mask: bytes | str | None) -> AsyncIterator[RequestOptions]:
        """`options` with the job's own copies of `image` (an image prompt) and `mask` (inpainting:
        white is redrawn), each given as bytes or as an `upload()` handle. Without a size of its
        own the job takes the picture's aspect. If the body raises (the request is refused), the
        copies are removed: a refused request leaves nothing behind."""
        if image is None:
            if mask is not None:
                raise UserError("mask_needs_image")
            yield options
            return
        kept: list[Path] = []
        try:
            source = await self._job_upload(image, "image", kept)
            said_size = options.width is not None or options.height is not None or options.aspect is not None
            shape = {} if said_size else {"aspect": aspect_of(self.uploads.size_of(source))}
            masked = {"mask_image": str(await self._job_upload(mask, "mask", kept))} if mask is not None else {}
            yield replace(options, init_image=str(source), **shape, **masked)
        except BaseException:
            for path in kept:
                self.uploads.remove(path)
            raise

    async def _job_upload(self, given: bytes | str, what: str, kept: list[Path]) -> Path:
        """The job's own copy of an uploaded image, from its bytes (no handle for later) or its handle."""
        if isinstance(given, (bytes, bytearray)):
            path = await asyncio.to_thread(self.uploads.save_for_job, bytes(given), what)
        else:
            path = self.uploads.keep_for_job(self.uploads.find(given, what))
        kept.append(path)
        return path


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")

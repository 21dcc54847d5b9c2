"""Jobs as Discord messages: status lines, the result embed, and image files that fit the upload limit."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import discord
from PIL import Image

from bot.core.jobs import Job, short_id
from bot.frontends.text import clip, job_error
from bot.frontends.discord.strings import render

DEFAULT_FILESIZE_LIMIT = 10 * 1024 * 1024  # Discord's limit without boosts, when nothing better is known
EMBED_TITLE_LIMIT = 256
EMBED_FIELD_LIMIT = 1024
JPEG_QUALITIES = (90, 80, 70, 55, 40)
SMALLEST_SIDE = 32  # stop shrinking here; below it nothing is worth sending


@dataclass(frozen=True)
class Upload:
    file: discord.File | None  # None: not even a small JPEG fits; the embed tells why
    compressed: bool


def status_text(event: dict, job: str, locale: str | None) -> str:
    """A progress line of the job whose short id is `job`."""
    kind = event["type"]
    if kind in ("queued", "position"):
        eta = event.get("eta")
        text = render("dc_queued", locale, job=job, position=event["position"])
        return text + (" " + render("dc_eta", locale, seconds=round(eta)) if eta else "")
    if kind == "started":
        return render("dc_starting", locale, job=job)
    if kind == "progress":
        return render("dc_progress", locale, job=job, step=event["step"], total=event["total"])
    raise ValueError(f"not a progress event: {kind}")


def failure_text(job: Job, locale: str | None) -> str:
    if job.status == "cancelled":
        return render("dc_cancelled", locale, job=short_id(job.public_id))
    return render("dc_failed", locale, job=short_id(job.public_id), error=job_error(job, locale) or "?")


def result_embed(job: Job, locale: str | None, filename: str | None, note: str | None = None) -> discord.Embed:
    request = job.request
    embed = discord.Embed(title=clip(request.prompt, EMBED_TITLE_LIMIT), colour=discord.Colour.blurple())
    seeds = ", ".join(str(image.seed) for image in job.images) or str(request.seed)
    fields = [
        ("dc_field_model", request.model),
        ("dc_field_seed", seeds),
        ("dc_field_size", f"{request.width}x{request.height}"),
        ("dc_field_steps", str(request.steps)),
        ("dc_field_guidance", f"{request.guidance:g}"),
        ("dc_field_scheduler", request.scheduler),
    ]
    for key, value in fields:
        embed.add_field(name=render(key, locale), value=value, inline=True)
    if request.negative_prompt:
        embed.add_field(name=render("dc_field_negative", locale), value=clip(request.negative_prompt, EMBED_FIELD_LIMIT),
                        inline=False)
    if note:
        embed.add_field(name="\u200b", value=note, inline=False)
    if filename:
        embed.set_image(url=f"attachment://{filename}")
    embed.set_footer(text=render("dc_footer", locale, job=short_id(job.public_id)))
    return embed


def result_upload(path: Path, limit: int | None) -> Upload:
    """The PNG when it fits `limit` bytes, else a JPEG made smaller until it fits: never a failed upload."""
    limit = limit or DEFAULT_FILESIZE_LIMIT
    if path.stat().st_size <= limit:
        return Upload(discord.File(path, filename=path.name), compressed=False)
    with Image.open(path) as source:
        image = source.convert("RGB")
    stem = path.stem
    while True:
        for quality in JPEG_QUALITIES:
            data = io.BytesIO()
            image.save(data, "JPEG", quality=quality, optimize=True)
            if data.tell() <= limit:
                data.seek(0)
                return Upload(discord.File(data, filename=f"{stem}.jpg"), compressed=True)
        if min(image.size) // 2 < SMALLEST_SIDE:
            return Upload(None, compressed=True)
        image = image.resize((image.width // 2, image.height // 2), Image.LANCZOS)


def preview_file(data: bytes) -> discord.File:
    return discord.File(io.BytesIO(data), filename="preview.jpg")


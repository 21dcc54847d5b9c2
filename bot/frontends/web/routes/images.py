"""Finished images, by file name: to whoever has the URL (the names carry the job's random public
id, so they cannot be guessed), cached for good by that browser only (names never repeat)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from bot.frontends.web.deps import ConfigDep, Locale, Admitted
from bot.frontends.web.errors import error_response
from bot.frontends.web.strings import render

router = APIRouter(dependencies=[Admitted])  # signed-in callers where accounts are on; no banned one
IMAGE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.png$")


@router.get("/api/images/{file}")
async def image(file: str, config: ConfigDep, locale: Locale) -> Response:
    path = image_path(config.storage.outputs_path(), file)
    if path is None:
        return error_response(404, render("api_no_image", locale), "not_found")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=31536000, immutable"})


def image_path(outputs: Path, file: str) -> Path | None:
    """The file in the outputs folder that an /api/images/ URL names, or None."""
    if not IMAGE_FILE.fullmatch(file):
        return None
    path = (outputs.resolve() / file).resolve()
    return path if path.is_relative_to(outputs.resolve()) and path.is_file() else None

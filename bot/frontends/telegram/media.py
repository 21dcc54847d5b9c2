"""Images as Telegram takes them: photos are JPEG within 10 MB and 10000 px of width + height;
the lossless PNG goes out unchanged as a document."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_PHOTO_SIDES = 10_000  # width + height
JPEG_QUALITY = 92


def photo_bytes(path: Path) -> bytes:
    """A JPEG of the image, smaller (quality, then size) until it fits the photo limits."""
    with Image.open(path) as image:
        picture = image.convert("RGB")
    if picture.width + picture.height > MAX_PHOTO_SIDES:
        scale = MAX_PHOTO_SIDES / (picture.width + picture.height)
        picture = picture.resize((max(1, int(picture.width * scale)), max(1, int(picture.height * scale))))
    quality = JPEG_QUALITY
    while True:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= MAX_PHOTO_BYTES:
            return buffer.getvalue()
        if quality > 60:
            quality -= 15
        else:
            picture = picture.resize((max(1, picture.width * 3 // 4), max(1, picture.height * 3 // 4)))


"""Pictures users send to the bot: which ones are image prompts, and fetching them from Telegram.

A photo comes in several sizes; the largest is taken (Telegram keeps photos within 2560 px). An
image sent as a file keeps its original. Sizes Telegram states are checked before anything is
downloaded; the core checks the bytes again, and the pixels, before decoding them.
"""

from __future__ import annotations

from telegram import Bot, Chat, Document, Message, PhotoSize
from telegram.constants import ChatType

from bot.core.errors import UserError

IMAGINE = "/imagine"


def picture_of(message: Message) -> PhotoSize | Document | None:
    """The image a message carries: its largest photo size, or an image document."""
    if message.photo:
        return max(message.photo, key=lambda size: size.width * size.height)
    document = message.document
    if document is not None and (document.mime_type or "").startswith("image/"):
        return document
    return None


def for_me(message: Message, chat: Chat, username: str | None) -> bool:
    """Any picture in a private chat; in a group, one whose caption starts with /imagine or /describe
    (or /imagine@this_bot, not another bot's)."""
    if chat.type == ChatType.PRIVATE:
        return True
    first = (message.caption or "").split(maxsplit=1)[0] if message.caption else ""
    command, _, target = first.partition("@")
    return command.lower() in (IMAGINE, "/describe") and (not target or target.lower() == (username or "").lower())


def caption_prompt(message: Message) -> str:
    """The prompt in a picture's caption, less a leading /imagine."""
    parts = (message.caption or "").strip().split(maxsplit=1)
    if parts and parts[0].partition("@")[0].lower() == IMAGINE:
        return parts[1].strip() if len(parts) > 1 else ""
    return " ".join(parts)


async def download(bot: Bot, picture: PhotoSize | Document, limit: int) -> bytes:
    """The picture's bytes; a file Telegram says is over `limit` is refused without downloading it."""
    if picture.file_size and picture.file_size > limit:
        raise UserError("upload_too_large", what="image", got=_mib(picture.file_size), limit=_mib(limit))
    file = await bot.get_file(picture.file_id)
    if file.file_size and file.file_size > limit:
        raise UserError("upload_too_large", what="image", got=_mib(file.file_size), limit=_mib(limit))
    return bytes(await file.download_as_bytearray())


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"

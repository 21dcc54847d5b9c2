"""A core refusal in a frontend's own words.

The core raises `UserError`s with its own catalogue keys; a frontend that says the same thing its
own way (each keeps its own strings) renames the key on the way through:

    with reworded(nothing_to_cancel="tg_cancel_nothing"):
        job_id, status = await service.cancel_latest(origin)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from bot.core.errors import UserError


@contextmanager
def reworded(**keys: str) -> Iterator[None]:
    try:
        yield
    except UserError as error:
        if error.key not in keys:
            raise
        raise UserError(keys[error.key], **error.params) from None

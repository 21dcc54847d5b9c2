"""Errors whose text is fit to show the person who caused them."""

from __future__ import annotations

from bot.core.messages import render


class UserError(Exception):
    """Something the user can fix: bad input, an unknown model, a size over the limit.

    Carries a catalogue key and its parameters so each frontend can render it in the user's
    language; `str(error)` is the English text (logs, the CLI, the HTTP API).
    """

    def __init__(self, key: str, **params: object) -> None:
        self.key = key
        self.params = params
        super().__init__(render(key, None, **params))

    def render(self, locale: str | None) -> str:
        return render(self.key, locale, **self.params)


class Cancelled(Exception):
    """The job was cancelled while it ran; not an error of the user or of the machine."""

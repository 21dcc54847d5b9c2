"""Errors whose text is fit to show the person who caused them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.core.messages import CORE
from bot.models.errors import ModelUnavailable

if TYPE_CHECKING:  # bot.core.jobs imports this module
    from bot.core.jobs import Origin


class UserError(Exception):
    """Something the user can fix: bad input, an unknown model, a size over the limit.

    Carries a catalogue key and its parameters so each frontend can render it in the user's
    language (`Catalogue.explain`); `str(error)` is the English text (logs, the CLI). A frontend's
    own refusals carry keys of its own catalogue, which the core cannot word: their `str` is the key.
    """

    def __init__(self, key: str, **params: object) -> None:
        self.key = key
        self.params = params
        super().__init__(CORE.render(key, None, **params) if key in CORE else key)

    def render(self, locale: str | None) -> str:
        """The core's wording in the user's language."""
        return CORE.render(self.key, locale, **self.params)


def model_refusal(unavailable: ModelUnavailable) -> UserError:
    """The model store's ModelUnavailable as the refusal a person reads: bot/models sits below the
    core and words nothing, so whoever asks the registry for a user's variant translates here."""
    if unavailable.problem is not None:
        return UserError("model_broken", name=unavailable.name, error=unavailable.problem)
    return UserError("unknown_model", got=unavailable.name, available=", ".join(unavailable.available) or "none")


class Cancelled(Exception):
    """The job was cancelled while it ran; not an error of the user or of the machine."""


def require_admin(origin: Origin) -> None:
    """Refuse anyone but an admin: setting defaults, bans, the audit log, reloading models."""
    if not origin.is_admin:
        raise UserError("not_admin")

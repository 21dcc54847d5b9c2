"""Why the model store cannot hand out a variant asked for by name.

bot/models sits below the core and imports nothing of it, so it words nothing for people: it says
what is the case (no usable variant of that name, or one that is broken and why) and the core turns
that into the refusal a person reads in their language (`bot.core.errors.model_refusal`, the
catalogue's "unknown_model" and "model_broken"). Whoever asks the registry for a variant on a
user's behalf (the engine, an executor, the command line) translates there; the training scripts
and tools that only read the store never need the core.
"""

from __future__ import annotations

from typing import Sequence


class ModelUnavailable(Exception):
    """No usable variant `name`: unknown or disabled (`problem` is None; `available` lists the ready
    ones), or broken (`problem` says why)."""

    def __init__(self, name: str, *, available: Sequence[str] = (), problem: str | None = None) -> None:
        self.name = name
        self.available = tuple(available)
        self.problem = problem
        super().__init__(f"model {name!r} is broken: {problem}" if problem is not None
                         else f"no model {name!r} (ready: {', '.join(self.available) or 'none'})")

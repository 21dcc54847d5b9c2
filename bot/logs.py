"""Structured logs (logfmt: `time=... level=... logger=... msg="..."`) that never show a secret."""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Iterable


class SecretFilter(logging.Filter):
    """Replaces any configured secret that slipped into a log record with ***: in the message, and
    in the exception text and stack printed under it (a library's error may quote a token, and a
    traceback shows the arguments' text, e.g. a request URL with the Telegram token in it)."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if self._has_secret(message):
            record.msg, record.args = self.mask(message), None
        if record.exc_info and not record.exc_text:
            # Formatted once here; every formatter prints exc_text when it is set instead of
            # formatting exc_info again (ours included), so the unmasked text never gets out.
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text and self._has_secret(record.exc_text):
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info and self._has_secret(record.stack_info):
            record.stack_info = self.mask(record.stack_info)
        return True

    def _has_secret(self, text: str) -> bool:
        return any(secret in text for secret in self.secrets)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


_PLAIN = logging.Formatter()


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace('"', "'")
        line = (f"time={time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(record.created))} "
                f"level={record.levelname.lower()} logger={record.name} msg=\"{message}\"")
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # already masked when the SecretFilter saw the record first
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


# The ML libraries are chatty (progress bars, deprecation notes, bitsandbytes' notes about its
# optional `kernels` when peft imports it, torchao's registration notes); users need our messages.
# Errors still show.
CHATTY = ("diffusers", "transformers", "accelerate", "huggingface_hub", "peft", "bitsandbytes", "kernels", "torchao",
          "torch.utils._pytree")
# Loggers that would print a secret at INFO: httpx logs every request URL, and the Telegram Bot
# API's URLs contain the bot token.
LEAKY = ("httpx",)


def setup(verbose: bool, secrets: Iterable[str | None] = (), level: int = logging.WARNING) -> None:
    """The logging of the `imagebot` command, set up once before anything else is imported:
    logfmt lines on stderr that never show one of `secrets`, at `level` (INFO when `verbose`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if verbose else level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    # Libraries that log through their own switches read these when they load.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "info" if verbose else "error")
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes of the ML libraries
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if verbose else logging.WARNING)
    keep_secrets_out()


def keep_secrets_out() -> None:
    """Raise the loggers that would print a secret to WARNING, whatever else is logged."""
    for name in LEAKY:
        logging.getLogger(name).setLevel(logging.WARNING)

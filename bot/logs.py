"""Structured logs (logfmt: `time=... level=... logger=... msg="..."`) that never show a secret."""

from __future__ import annotations

import logging
import time
from typing import Iterable


class SecretFilter(logging.Filter):
    """Replaces any configured secret that slipped into a log message with ***."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            if any(secret in message for secret in self.secrets):
                for secret in self.secrets:
                    message = message.replace(secret, "***")
                record.msg, record.args = message, None
        return True


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace('"', "'")
        line = (f"time={time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(record.created))} "
                f"level={record.levelname.lower()} logger={record.name} msg=\"{message}\"")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(verbose: bool, secrets: Iterable[str | None] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # The ML libraries are chatty (progress bars, deprecation notes); users need our messages.
    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    # httpx logs every request URL at INFO, and Telegram's URLs contain the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if verbose else logging.WARNING)

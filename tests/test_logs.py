"""bot/logs.py: no configured secret reaches a log line, tracebacks included."""

from __future__ import annotations

import io
import logging

import pytest

from bot.logs import LogfmtFormatter, SecretFilter

TELEGRAM_TOKEN = "123456:AAH-telegram-token-xyz"
WEBHOOK_SECRET = "webhook-secret-42"
ADMIN_TOKEN = "admin-token-abcdef"


@pytest.fixture
def logged():
    """A real logger writing logfmt lines through the SecretFilter into a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter())
    handler.addFilter(SecretFilter([TELEGRAM_TOKEN, WEBHOOK_SECRET, ADMIN_TOKEN, None]))
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def _fetch(token: str) -> None:
    url = f"https://api.telegram.org/bot{token}/getMe"
    raise ConnectionError(f"cannot reach {url}")


def test_a_logged_exception_never_prints_the_token(logged):
    logger, stream = logged
    try:
        try:
            _fetch(TELEGRAM_TOKEN)
        except ConnectionError as error:
            raise RuntimeError(f"start-up failed with {TELEGRAM_TOKEN}") from error
    except RuntimeError:
        logger.exception("telegram: polling failed")
    text = stream.getvalue()
    assert "Traceback" in text and "ConnectionError" in text and "RuntimeError" in text
    assert "https://api.telegram.org/bot***/getMe" in text
    assert TELEGRAM_TOKEN not in text


def test_exc_info_and_stack_info_are_masked(logged):
    logger, stream = logged
    try:
        raise ValueError(f"bad header {WEBHOOK_SECRET}")
    except ValueError as error:
        logger.error("webhook refused", exc_info=error, stack_info=True)
    logger.info("admin token %s and webhook %s", ADMIN_TOKEN, WEBHOOK_SECRET)
    text = stream.getvalue()
    assert "ValueError: bad header ***" in text
    assert "Stack (most recent call last)" in text
    assert "admin token *** and webhook ***" in text
    for secret in (TELEGRAM_TOKEN, WEBHOOK_SECRET, ADMIN_TOKEN):
        assert secret not in text


def test_a_second_handler_without_the_filter_gets_the_masked_traceback(logged):
    """The masked text is kept on the record, so a plain formatter after ours prints it as well."""
    logger, stream = logged
    plain = io.StringIO()
    other = logging.StreamHandler(plain)
    other.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(other)
    try:
        try:
            _fetch(TELEGRAM_TOKEN)
        except ConnectionError:
            logger.exception("failed")
    finally:
        logger.removeHandler(other)
    assert "bot***/getMe" in plain.getvalue() and TELEGRAM_TOKEN not in plain.getvalue()


def test_every_secret_the_environment_gives_is_masked():
    """`imagebot` hands logs.setup() all of Secrets: the webhook secret and the admin token too."""
    from dataclasses import astuple

    from bot.config import Secrets

    secrets = Secrets.from_env({"DISCORD_TOKEN": "discord-token-123", "TELEGRAM_TOKEN": TELEGRAM_TOKEN,
                                "TELEGRAM_WEBHOOK_SECRET": WEBHOOK_SECRET, "IMAGEBOT_ADMIN_TOKEN": ADMIN_TOKEN})
    masked = SecretFilter(astuple(secrets)).mask(f"{TELEGRAM_TOKEN} {WEBHOOK_SECRET} {ADMIN_TOKEN} discord-token-123")
    assert masked == "*** *** *** ***"

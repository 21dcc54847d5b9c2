"""The connection guard's parts that need no server: the cap below the file limit and the log filter
that folds asyncio's accept() failures (the flood itself: tests/test_file_limit.py)."""

from __future__ import annotations

import logging
import resource

from bot.frontends.web.connections import FD_RESERVE, OncePerMinute, connection_cap


def test_the_cap_stays_below_the_open_file_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(100) == 100
    if soft != resource.RLIM_INFINITY:
        assert connection_cap(10 ** 9) == max(16, soft - FD_RESERVE)


def test_accept_failures_become_one_short_line_a_minute():
    folded = OncePerMinute()
    try:
        raise OSError(24, "Too many open files")
    except OSError as error:
        failure = error
    records = [logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "socket.accept() out of system resource",
                                 None, (OSError, failure, failure.__traceback__)) for _ in range(100)]
    passed = [record for record in records if folded.filter(record)]
    assert len(passed) == 1
    assert passed[0].exc_info is None and passed[0].levelname == "WARNING"
    assert "out of file descriptors" in passed[0].getMessage() and "once a minute" in passed[0].getMessage()
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception was never retrieved", None, None)
    assert folded.filter(other)  # everything else passes untouched

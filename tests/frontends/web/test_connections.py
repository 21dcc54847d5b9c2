"""The connection guard's parts that need no server: the cap below the file limit and below
uvicorn's limit_concurrency, and the log filter that folds asyncio's accept() failures (the flood
itself: tests/test_file_limit.py)."""

from __future__ import annotations

import logging
import resource

from bot.frontends.web.connections import ACCEPT_BATCH, FD_RESERVE, OncePerMinute, connection_cap


def test_the_cap_stays_below_the_open_file_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_cap(100) == 100
    if soft != resource.RLIM_INFINITY:
        assert connection_cap(10 ** 9) == max(16, soft - FD_RESERVE)


def test_the_cap_stays_below_limit_concurrency_whatever_the_file_limit(monkeypatch):
    """uvicorn answers 503 to every request while limit_concurrency connections are open: the
    oldest idle one must make way before then, with room for the connections one turn of the event
    loop accepts (ACCEPT_BATCH per listening socket) while the ones closed for them still count."""
    for soft in (8192, 65536, resource.RLIM_INFINITY):
        monkeypatch.setattr(resource, "getrlimit", lambda _, soft=soft: (soft, resource.RLIM_INFINITY))
        assert connection_cap(4096, 1024) == 1024 - 2 * ACCEPT_BATCH  # 768
        assert connection_cap(4096, 1024, listeners=2) == 1024 - 3 * ACCEPT_BATCH  # IPv4 and IPv6
        assert connection_cap(4096, 256) == 128  # a small limit: half
        assert connection_cap(4096, 3) == 2
        assert connection_cap(500, 1024) == 500  # a lower max_connections still rules
        assert connection_cap(4096, None) == (4096 if soft == resource.RLIM_INFINITY else min(4096, soft - FD_RESERVE))
    for limit in (2, 16, 100, 256, 511, 512, 1024, 4096, 10 ** 6):
        for listeners in (1, 2, 3):
            cap = connection_cap(10 ** 9, limit, listeners)
            assert 1 <= cap < limit
            assert cap <= max(limit - ACCEPT_BATCH * (listeners + 1), (limit + 1) // 2)
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 20000))
    assert connection_cap(4096, 4096) == 1024 - FD_RESERVE  # the file limit, when it is the lower


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

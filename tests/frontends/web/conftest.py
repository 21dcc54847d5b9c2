"""Fixtures the web tests share: the HTTP API stack (`make_api`, `api`) and the browser and running
server of the page tests (module-scoped)."""

from tests.helpers.api import api, make_api  # noqa: F401 (fixtures)
from tests.helpers.page import browser, context, page, server  # noqa: F401 (fixtures)

"""The browser and the running server the page tests share (module-scoped fixtures)."""

from tests.helpers.page import browser, context, page, server  # noqa: F401 (fixtures)

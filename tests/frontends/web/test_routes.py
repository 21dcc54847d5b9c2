"""The API's routes can be found and walked: each lives in a router of bot/frontends/web/routes/,
and together they are the URLs clients rely on (docs/api.md)."""

from __future__ import annotations

from bot.frontends.web.routes import ROUTERS

URLS = {
    ("POST", "/api/jobs"), ("POST", "/api/jobs/{job_id}/{action}"), ("GET", "/api/jobs/{job_id}"),
    ("DELETE", "/api/jobs/{job_id}"), ("GET", "/api/jobs/{job_id}/preview"), ("GET", "/api/jobs/{job_id}/events"),
    ("GET", "/api/events"),
    ("GET", "/api/history"), ("GET", "/api/models"), ("PUT", "/api/models/default"), ("POST", "/api/models/reload"),
    ("GET", "/api/images/{file}"), ("GET", "/"), ("GET", "/api/messages"), ("GET", "/api/options"),
    ("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/api/admin/ban"), ("POST", "/api/admin/unban"),
    ("GET", "/api/audit"), ("POST", "/api/uploads"), ("POST", "/api/describe"), ("GET", "/api/session"),
    ("POST", "/api/session"), ("DELETE", "/api/session"),
}


def test_the_routers_hold_every_url_once():
    found = [(method, route.path) for router in ROUTERS for route in router.routes for method in route.methods]
    assert sorted(found) == sorted(URLS)


def test_each_router_is_about_one_thing():
    """A router's URLs share a concern, which its module names (jobs, events, models, admin, ...)."""
    for router in ROUTERS:
        module = router.routes[0].endpoint.__module__
        assert all(route.endpoint.__module__ == module for route in router.routes), module


def test_the_a1111_router_holds_the_sdapi_urls_it_serves():
    """Included by create_app only with [a1111] enabled, so not one of ROUTERS."""
    from bot.frontends.web.routes import a1111

    found = {(method, route.path) for route in a1111.router.routes for method in route.methods}
    assert {("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/img2img"), ("GET", "/sdapi/v1/sd-models"),
            ("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/options"), ("GET", "/sdapi/v1/progress"),
            ("POST", "/sdapi/v1/interrupt"), ("GET", "/sdapi/v1/samplers"), ("GET", "/sdapi/v1/schedulers")} <= found
    assert all(path.startswith("/sdapi/v1/") for _, path in found)

"""The API's routes, one module per concern; `create_app` includes them in this order."""

from bot.frontends.web.routes import admin, describe, events, health, images, jobs, models, page, session, uploads

ROUTERS = (jobs.router, uploads.router, describe.router, events.router, models.router, admin.router, images.router,
           page.router, health.router, session.router)

"""The FastAPI app: ``create_app()`` builds it (uvicorn calls it as a factory, once per worker).

Settings come from ``get_settings`` (environment + ``BIRDSEARCH_CONFIG``), the one dependency
tests override; ``create_app(settings, models)`` does that override for them and lets several apps
share already-loaded models. Middleware, outermost first: metrics, the body limit (so refused
uploads are counted), CORS.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from birdsearch import __version__
from birdsearch.engine.runtime import Models, Runtime
from birdsearch.service.errors import install_error_handlers
from birdsearch.service.metrics import MetricsMiddleware
from birdsearch.service.routes import admin, evaluation, health, images, query, species, web
from birdsearch.service.settings import Settings, get_settings
from birdsearch.service.thumbnails import ThumbnailCache
from birdsearch.service.upload import BodyLimitMiddleware

log = logging.getLogger(__name__)

SMALL_BODY_LIMIT = 64 * 1024  # bodies of routes other than /query (admin posts carry none)

DESCRIPTION = """
Upload a bird recording; get back the species that made the sound and photographs of them, ranked
with scores. The audio is embedded by BioLingual's audio tower distilled into BioCLIP-2's text
space (or, without a distilled checkpoint, by the zero-shot cascade), and searched against an index
of BioCLIP-2 image embeddings.

Every error answers `{"detail": "...", "code": "..."}`; `code` is stable.
"""


def settings_of(app: FastAPI) -> Settings:
    """The settings the app's routes see: ``get_settings`` or its override."""
    return app.dependency_overrides.get(get_settings, get_settings)()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = settings_of(app)
    runtime = Runtime(settings.engine_config(), app.state.preloaded_models)
    app.state.runtime = runtime
    app.state.thumbnails = ThumbnailCache(settings.thumbnail_cache_bytes)
    await runtime.start()
    log.info(
        "birdsearch %s serving modes %s (default %s), index root %s",
        __version__, runtime.modes, settings.default_mode, settings.index_root,
    )  # fmt: skip
    try:
        yield
    finally:
        await runtime.stop()


def create_app(settings: Settings | None = None, models: Models | None = None) -> FastAPI:
    """The app; ``settings`` overrides ``get_settings`` and ``models`` skips loading them."""
    app = FastAPI(
        title="birdsearch",
        version=__version__,
        summary="Bird sound in, bird photos out.",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.state.preloaded_models = models
    effective = settings_of(app)
    install_error_handlers(app)
    routers = (query, images, species, health, evaluation, admin, web)
    for router in (module.router for module in routers):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    if effective.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=effective.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(
        BodyLimitMiddleware, limits={"/query": effective.max_upload_bytes}, default_limit=SMALL_BODY_LIMIT
    )
    app.add_middleware(MetricsMiddleware)
    return app

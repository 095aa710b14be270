"""App factory: create_app(settings) wires storage, the model worker, the service and the routes.

Startup (lifespan): run migrations (fatal on failure), then load the model and rebuild the index on
the worker in the background, so /healthz answers at once and /readyz says 503 until all is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from app import errors
from app.body_limit import BodyLimitMiddleware
from app.console_routes import mount_console
from app.docs import docs_router, install_openapi
from app.metrics import Metrics, MetricsMiddleware
from app.openai_api import router as openai_router
from app.request_guard import RequestGuardMiddleware
from app.request_id import RequestIdMiddleware
from app.routes import router as edits_router
from app.service import EditService
from app.settings import Settings
from app.worker import ModelWorker
from storage.db import make_db_engine
from storage.migrate import upgrade
from storage.repository import Repository

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """`on_fatal` is called if the model cannot load (serve() uses it to exit non-zero)."""
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = make_db_engine(settings.resolved_database_url)
        await asyncio.to_thread(upgrade, db)
        worker = ModelWorker(settings.max_batch_size, on_step=metrics.batch_size.observe)
        repo = Repository(db)
        svc = EditService(settings, repo, worker, metrics)
        app.state.repo, app.state.service = repo, svc
        tasks = [asyncio.create_task(_load(svc, on_fatal), name="sola-load")]
        if settings.sync_interval > 0:
            tasks.append(asyncio.create_task(_follow_database(svc, settings.sync_interval), name="sola-sync"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(worker.shutdown)
            db.dispose()
            log.info("stopped")

    app = FastAPI(
        title="SoLA model-editing service",
        summary="Revocable, audited edits of a frozen LLM (one routed LoRA per edit)",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by app/docs.py, behind a key unless SOLA_PUBLIC_DOCS
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    errors.install(app)
    app.include_router(edits_router)
    app.include_router(openai_router)
    app.include_router(docs_router)
    install_openapi(app)
    mount_console(app)  # /console: the operator console; / redirects there
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    keyless = not settings.keys
    app.add_middleware(RequestGuardMiddleware, keyless=keyless, allowed_hosts=settings.allowed_host_names)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)
    return app


async def _load(svc: EditService, on_fatal: Callable[[str], None] | None) -> None:
    try:
        await svc.worker.run(svc.load)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        svc.startup_error = f"{type(exc).__name__}: {exc}"
        log.critical("cannot load the model: %s", svc.startup_error, exc_info=True)
        if on_fatal is not None:
            on_fatal(svc.startup_error)
        svc.phase = "failed"
        svc.state = "failed"  # last: whoever sees "failed" also sees the error and the fatal callback done


async def _follow_database(svc: EditService, interval: float) -> None:
    """Replicas sharing one database keep their index in step by following its audit log (EditService.sync)."""
    while True:
        await asyncio.sleep(interval)
        if svc.state != "ready":
            continue
        try:
            await svc.sync()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("could not follow the audit log", exc_info=True)

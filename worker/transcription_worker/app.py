"""The FastAPI application: lifespan, request metrics and logs, and the operational routes.

The API routes live in api.py. The model loads on a background thread at start-up so that
/healthz answers at once and /readyz says truthfully when the worker can take traffic (the
deploy's readiness gate); until then transcription requests get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, db, errors, metrics
from .config import Settings
from .workqueue import WorkQueue
from .limits import Limits
from .model import Transcriber

# HTTP methods a metric keeps as they are (RFC 9110's, and PATCH); any other is "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
from .recovery import JobKeeper, instance_id
from .storage import AudioStore
from .uploads import BodyLimit

log = logging.getLogger("transcription_worker")


@dataclass
class State:
    """Everything a request or a background thread of this process needs: settings, queue,
    limits, and (when configured) database, audio store and the loaded model (None while
    loading; `model_error` says why it failed)."""

    settings: Settings
    queue: WorkQueue
    limits: Limits
    db: db.Database | None = None
    store: AudioStore | None = None
    transcriber: Transcriber | None = None
    model_error: str | None = None
    owner: str = field(default_factory=instance_id)  # names this process in the job rows it owns
    keeper: JobKeeper | None = None  # with a database: leases, adoption, the job backlog
    started: float = field(default_factory=time.time)


def _load_model(state: State) -> None:
    s = state.settings
    try:
        state.transcriber = Transcriber(s.model_path, s.device, s.compute_type, s.concurrency,
                                        s.cpu_threads, s.beam_size, s.model_name, s.batch_size,
                                        s.batched_min_seconds, s.transcription_budget_factor,
                                        s.transcription_budget_min_seconds)
    except Exception as exc:  # a model that cannot load is fatal: let the supervisor see it
        state.model_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load, stopping", extra={"error": state.model_error})
        os.kill(os.getpid(), signal.SIGTERM)
        return
    metrics.MODEL_LOAD_SECONDS.set(state.transcriber.load_seconds)
    metrics.MODEL_LOADED.set(1)
    t = state.transcriber
    metrics.MODEL.info({"device": s.device, "compute_type": s.compute_type, "cpu_threads": str(s.cpu_threads),
                        "num_workers": str(s.concurrency), "batch_size": str(t.batch_size),
                        "beam_size": str(t.beam_size)})
    log.info("model loaded", extra={"model": s.model_name, "path": str(s.model_path),
                                    "device": s.device, "compute_type": s.compute_type,
                                    "batch_size": state.transcriber.batch_size,
                                    "seconds": round(state.transcriber.load_seconds, 3)})


class RequestMetrics:
    """ASGI middleware: count and time every request by route template and status, log it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            # a made-up method is "other": every label value a client can choose is one more series
            method = scope["method"] if scope["method"] in _METHODS else "other"
            labels = (method, route, str(status))
            metrics.REQUESTS.labels(*labels).inc()
            metrics.REQUEST_DURATION.labels(*labels).observe(elapsed)
            if route not in ("/healthz", "/readyz", "/metrics"):
                log.info("request", extra={"method": scope["method"], "path": scope["path"],
                                           "route": route, "status": status,
                                           "duration_ms": round(elapsed * 1000, 1),
                                           "key_id": scope.get("state", {}).get("key_id")})


def _on_stop_signal(action) -> None:
    """Run `action()` when SIGTERM or SIGINT arrives, then the handler in place (uvicorn's,
    which starts the graceful shutdown). The lifespan's shutdown comes only after every
    in-flight request has finished, up to a transcription's budget later: a worker told to
    stop kept taking backlog jobs all that while (breaker 31 F3). uvicorn puts its own
    handlers back when it is done, which drops this one with them. Main thread only (where
    uvicorn.run runs the lifespan); elsewhere nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            action()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app for `settings`: middleware (body limits, request metrics), the probes,
    /version, /metrics and the /v1 routers. The lifespan opens the database, starts the job
    keeper and loads the model on a thread; on shutdown it drains the queue first."""
    state = State(settings=settings, queue=WorkQueue(settings.concurrency, settings.queue_size),
                  limits=Limits(settings.redis_url, settings.rate_limit_rpm,
                                settings.rate_limit_concurrent_uploads,
                                settings.rate_limit_daily_audio_seconds,
                                settings.upload_lease_seconds, settings.rate_limit_open_uploads,
                                settings.rate_limit_parts_per_minute,
                                settings.rate_limit_daily_upload_mb))
    if settings.database_url:
        state.db = db.Database(settings.database_url, max_size=settings.concurrency + 8)
    if settings.s3_bucket:
        state.store = AudioStore(settings.s3_bucket, settings.s3_endpoint_url, settings.s3_prefix)
    metrics.PART_MEMORY_BUDGET.set(settings.part_memory_mb * 1024 * 1024)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics.BUILD.info({"version": settings.version, "color": settings.color,
                            "model": settings.model_name, "compute_type": settings.compute_type,
                            "device": settings.device})
        if state.db:
            state.db.open()
        keeper = JobKeeper(state, settings.job_lease_seconds, settings.job_max_attempts,
                           settings.job_patience_seconds) if state.db else None
        if keeper:
            state.keeper = keeper
            state.queue.on_room = keeper.nudge  # a freed model slot takes the backlog's oldest job at once
            _on_stop_signal(keeper.stop_adopting)
            keeper.start()
        threading.Thread(target=_load_model, args=(state,), name="model-load", daemon=True).start()
        log.info("worker starting", extra={"version": settings.version, "color": settings.color,
                                           "jobs": settings.jobs_enabled,
                                           "limits": bool(settings.redis_url)})
        yield
        log.info("shutting down: finishing queued transcriptions")
        if keeper:
            keeper.stop_adopting()  # take on nothing more, but keep the leases of what drains
        await run_in_threadpool(state.queue.shutdown)
        if keeper:
            await run_in_threadpool(keeper.stop)
        if state.db:
            await run_in_threadpool(state.db.close)
        await state.limits.close()
        log.info("shutdown complete")

    docs = settings.docs_enabled  # off by default when keys are on: the API's map is not public
    app = FastAPI(title="transcription-worker", version=__version__, lifespan=lifespan,
                  docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.worker = state
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes,
                       part_bytes=settings.max_part_bytes)
    app.add_middleware(RequestMetrics)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. Nothing else, so a slow database never restarts it."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        if state.transcriber:
            checks["model"] = "ok"
        else:
            checks["model"] = f"failed: {state.model_error}" if state.model_error else "loading"

        async def probe(name: str, enabled: bool, fn: Any) -> None:
            if not enabled:
                checks[name] = "disabled"
                return
            try:
                await asyncio.wait_for(fn(), timeout=4)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"failing: {type(exc).__name__}"

        await asyncio.gather(
            probe("postgres", bool(settings.database_url),
                  lambda: run_in_threadpool(db.ping, settings.database_url)),
            probe("s3", state.store is not None, lambda: run_in_threadpool(state.store.check)),
            probe("redis", bool(settings.redis_url), state.limits.ping),
        )
        # Redis is reported but does not gate readiness: limits fail open without it.
        ready = checks["model"] == "ok" and all(
            checks[k] in ("ok", "disabled") for k in ("postgres", "s3"))
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": settings.version, "color": settings.color,
                "model": settings.model_name, "device": settings.device,
                "compute_type": settings.compute_type}

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        """Needs a key when keys are on; the scraper uses WORKER_METRICS_PORT instead."""
        from .api import authenticate

        authenticate(request)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    from .api import router
    from .file_uploads import router as uploads_router

    app.include_router(router)
    app.include_router(uploads_router)
    return app

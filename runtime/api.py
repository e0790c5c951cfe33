"""The daemon's HTTP API (FastAPI on uvicorn): tasks, stop, e-stop, status, metrics, events.

docs/daemon.md is the contract. Reads are open; every mutating call needs the bearer token
(compared in constant time). Bodies are read only up to `max_body_bytes`, parsed by hand (bad
JSON is a 400 that says where) and validated by pydantic models that forbid unknown fields; a
`ControllerError` becomes its status code with the controller's reason; anything else is a 500
with the exception's message, and the daemon carries on.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from aimg.runtime.controller import Controller, ControllerError
from aimg.runtime.task_recording import json_safe

log = logging.getLogger("aimg.daemon.api")

LIVE_DIR = Path(str(files("aimg.runtime") / "live"))
SSE_KEEPALIVE_S = 10.0


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "1" is not a number here

    instruction: str = Field(min_length=1, max_length=500)
    max_duration_s: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
    deadman_s: float | None = Field(default=None, ge=0.2, le=60.0, allow_inf_nan=False)

    @field_validator("instruction")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("instruction is blank")
        if any(not ch.isprintable() for ch in value):
            raise ValueError("instruction has control characters")
        return value


class KnockRequest(BaseModel):
    """Sim only: bump a camera (base-frame translation, m; rotation about its own axes, deg)."""

    model_config = ConfigDict(extra="forbid")

    translation_m: list[float] = Field(default=[0.0, 0.0, 0.0], min_length=3, max_length=3)
    rotation_deg: list[float] = Field(default=[0.0, 0.0, 0.0], min_length=3, max_length=3)

    @field_validator("translation_m")
    @classmethod
    def _near(cls, value: list[float]) -> list[float]:
        if any(abs(v) > 0.5 for v in value):
            raise ValueError("translation_m entries must be within +-0.5 m")
        return value

    @field_validator("rotation_deg")
    @classmethod
    def _slight(cls, value: list[float]) -> list[float]:
        if any(abs(v) > 30.0 for v in value):
            raise ValueError("rotation_deg entries must be within +-30 deg")
        return value


class _BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, counted as they stream in (a
    missing or false Content-Length does not get past it). Bodies are small, so the whole body
    is read here before the app sees it, and the app reads it back from memory."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = {"detail": f"request body over {self.limit} bytes"}
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, too_big)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await _send_json(send, 413, too_big)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _send_json(send: Any, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def create_app(controller: Controller, token: str, max_body_bytes: int = 16384) -> FastAPI:
    """The ASGI app over `controller`; `token` guards every mutating call."""
    app = FastAPI(
        title="aimg daemon",
        description="Control API of an aimg robot cell (docs/daemon.md).",
        version="1",
        docs_url="/docs",
        redoc_url=None,
    )
    metrics = controller.metrics
    expected = f"Bearer {token}".encode()

    def authorise(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not given:
            raise ControllerError(401, "this call needs 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given, expected):
            raise ControllerError(401, "wrong token (see api.token_file of the cell config)")

    async def read_json(request: Request) -> Any:
        body = await request.body()
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ControllerError(400, f"the body is not valid JSON: {exc}") from exc

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Any:
        try:
            response = await call_next(request)
        except Exception as exc:  # never let a request take the daemon down
            log.exception("request failed")
            response = JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)
        route = request.scope.get("route")
        metrics.requests.labels(
            getattr(route, "path", "unmatched"), str(response.status_code)
        ).inc()
        return response

    @app.exception_handler(ControllerError)
    async def controller_error(_: Request, exc: ControllerError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.post("/tasks", status_code=202)
    async def post_task(request: Request) -> dict:
        authorise(request)
        data = await read_json(request)
        if not isinstance(data, dict):
            raise ControllerError(422, 'the body must be a JSON object {"instruction": ...}')
        try:
            body = TaskRequest.model_validate(data)
        except ValidationError as exc:
            raise ControllerError(422, _describe(exc)) from exc
        # in a worker thread: the calibration check before a task takes up to a few 100 ms
        task = await run_in_threadpool(
            controller.start_task, body.instruction, body.max_duration_s, body.deadman_s
        )
        return {"task": task}

    @app.post("/stop")
    async def post_stop(request: Request) -> dict:
        authorise(request)
        return controller.stop("stopped through the API")

    @app.post("/estop")
    async def post_estop(request: Request) -> dict:
        authorise(request)
        return controller.estop("e-stop through the API")

    @app.post("/reset")
    async def post_reset(request: Request) -> dict:
        authorise(request)
        return await asyncio.to_thread(controller.reset)  # may restart a process (seconds)

    @app.post("/keepalive")
    async def post_keepalive(request: Request) -> dict:
        authorise(request)
        return controller.keepalive()

    @app.post("/sim/cameras/{name}/knock")
    async def post_knock(name: str, request: Request) -> dict:
        authorise(request)
        body = await read_json(request)
        try:
            knock = KnockRequest.model_validate(body if body is not None else {})
        except ValidationError as exc:
            raise ControllerError(422, _describe(exc)) from exc
        return await run_in_threadpool(
            controller.knock_camera, name, knock.translation_m, knock.rotation_deg
        )

    @app.get("/status")
    async def get_status(servo_window_s: float | None = None) -> JSONResponse:
        if servo_window_s is not None and not 0.1 <= servo_window_s <= 60.0:
            raise ControllerError(422, "servo_window_s must be in [0.1, 60] s")
        return JSONResponse(json_safe(controller.status(servo_window_s)))

    @app.get("/health")
    async def get_health() -> JSONResponse:
        ok, body = controller.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def get_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type=metrics.content_type)

    @app.get("/events")
    async def get_events(request: Request) -> StreamingResponse:
        return StreamingResponse(
            _event_stream(controller, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        index = LIVE_DIR / "index.html"
        if not index.is_file():
            raise ControllerError(404, f"the live page is not installed ({index})")
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=LIVE_DIR, check_dir=False), name="static")
    return _BodyLimit(app, max_body_bytes)  # type: ignore[return-value]


async def _event_stream(controller: Controller, request: Request) -> Any:
    entry = controller.events.subscribe()
    _, queue = entry
    try:
        yield _sse("status", controller.status())
        last_sent = time.monotonic()
        while controller.state != "shutting_down":
            try:
                name, data = await asyncio.wait_for(queue.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    break
                if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            last_sent = time.monotonic()
            yield _sse(name, data)
        yield _sse("state", {"state": controller.state})
    finally:
        controller.events.unsubscribe(entry)


def _sse(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(json_safe(data), separators=(',', ':'))}\n\n"


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "body"
        parts.append(f"{where}: {error.get('msg')}")
    return "; ".join(parts)

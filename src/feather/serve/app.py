"""The ASGI app (Starlette): ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

    app = create_app(Pipeline.load("feather-export"), model_name="feather-export")
    uvicorn.run(app, host="127.0.0.1", port=8000)

``GET /`` is a web page to try the model (``static/``). Every error is one line of JSON in
OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``): 4xx for what the client
sent (400 bad field, 401 key, 404 model or route, 408 body not received in time, 413 body too
large, 415 not JSON, 429 busy), 5xx for failures of the server itself. Generation runs in the
engine's worker threads; the event loop only parses, schedules and streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from feather import jsonread
from feather.errors import ConfigError, FeatherError, InputError
from feather.serve import protocol
from feather.serve.engine import Busy, Engine
from feather.serve.protocol import Limits, RequestError

log = logging.getLogger("feather.serve")
_DONE = object()
STATIC = Path(__file__).parent / "static"


def create_app(pipe, model_name: str, limits: Limits = Limits(), max_concurrency: int = 1, max_queue: int = 16,
               api_key: str | None = None) -> Starlette:
    """An app serving ``pipe`` (a loaded ``Pipeline``) as ``model_name``."""
    server = _Server(pipe, model_name, limits, Engine(pipe, max_concurrency, max_queue), api_key)
    routes = [
        Route("/", server.page, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
    ]
    handlers = {RequestError: _request_error, Busy: _busy, FeatherError: _feather_error,
                HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=server.lifespan)
    app.state.engine = server.engine
    return app


class _Server:
    def __init__(self, pipe, model_name: str, limits: Limits, engine: Engine, api_key: str | None):
        self.pipe, self.model_name, self.limits, self.engine = pipe, model_name, limits, engine
        self.api_key = api_key.encode() if api_key else None
        self.started = int(time.time())
        self.max_seq = getattr(pipe.manifest, "max_seq", None)
        self.info = protocol.export_info(pipe.manifest)

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        yield
        self.engine.close()  # stop running generations so shutdown does not wait for them

    async def page(self, request: Request) -> Response:
        """The web page to try the model (static files, no build step)."""
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_name, **self.engine.stats()})

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        card = {"id": self.model_name, "object": "model", "created": self.started, "owned_by": "feather-vlm",
                "max_model_len": self.max_seq}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat(self, request: Request) -> Response:
        self._authorize(request)
        body = await _read_json(request, self.limits)
        # decoding the image and tokenizing are CPU work: off the event loop
        req, prompt_tokens = await run_in_threadpool(self._parse, body)
        cancel = threading.Event()
        watcher = asyncio.create_task(_watch_disconnect(request, cancel))
        if req.stream:
            return await self._stream(req, prompt_tokens, cancel, watcher)
        try:
            outcome = await self.engine.run(req, cancel)
        finally:
            watcher.cancel()
        if outcome.cancelled:  # nobody is listening any more
            return JSONResponse(protocol.error_body("client closed the connection", 499), status_code=499)
        body = protocol.completion_body(protocol.completion_id(), self.model_name, outcome.result, prompt_tokens,
                                        self.info)
        return JSONResponse(body)

    def _parse(self, body) -> tuple[protocol.ChatRequest, int]:
        req = protocol.parse_chat(body, self.limits)
        if req.model is not None and req.model != self.model_name:
            raise RequestError(404, f"model: {req.model!r} is not served here; this server serves "
                               f"{self.model_name!r}", "model", "model_not_found")
        req.point = protocol.check_point(self.pipe.manifest, req.point)  # a point outside the range: 400, no work
        prompt_tokens = len(self.pipe.encoder.encode(req.prompt)[0])
        if self.max_seq is not None and prompt_tokens + req.max_tokens > self.max_seq:
            raise RequestError(400, f"max_tokens: {prompt_tokens} prompt tokens + {req.max_tokens} new exceed the "
                               f"export's max_seq {self.max_seq}", "max_tokens")
        return req, prompt_tokens

    async def _stream(self, req, prompt_tokens: int, cancel: threading.Event, watcher: asyncio.Task) -> Response:
        """Server-sent events. The first piece is awaited before the response starts, so an
        error before any token (busy, a bad input the runtime found) is still a 4xx/5xx."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(self.engine.run(req, cancel, lambda p: loop.call_soon_threadsafe(pieces.put_nowait,
                                                                                                     p)))
        # runs on the loop after every put the worker scheduled, so _DONE comes last
        task.add_done_callback(lambda _: pieces.put_nowait(_DONE))
        first = await pieces.get()
        if first is _DONE and task.exception() is not None:
            watcher.cancel()
            raise task.exception()
        cid = protocol.completion_id()
        events = self._events(cid, req, prompt_tokens, first, pieces, task, cancel, watcher)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(self, cid, req, prompt_tokens, first, pieces, task, cancel, watcher):
        chunk = lambda delta, reason=None, **extra: _sse(protocol.chunk_body(cid, self.model_name, delta, reason,
                                                                             **extra))
        try:
            yield chunk({"role": "assistant", "content": ""})
            item = first
            while item is not _DONE:
                yield chunk({"content": item})
                item = await pieces.get()
            if task.exception() is not None:
                err = task.exception()
                log.error("generation failed mid-stream: %s", " ".join(str(err).split()))
                yield _sse(protocol.error_body(f"generation failed: {err}", 500))
                return
            outcome = task.result()
            if outcome.cancelled:
                return
            result = outcome.result
            yield chunk({}, result.finish_reason, feather=protocol.feather_extension(result, self.info))
            if req.include_usage:
                u = protocol.usage(prompt_tokens, len(outcome.result.tokens))
                yield _sse({**protocol.chunk_body(cid, self.model_name, {}), "choices": [], "usage": u})
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():
                cancel.set()  # the response ended early (client gone): stop generating
            watcher.cancel()

    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key):
            raise RequestError(401, "missing or wrong API key; send Authorization: Bearer KEY", code="invalid_api_key")


async def _read_json(request: Request, limits: Limits):
    """The body as JSON (``feather.jsonread``: depth-limited). The size is bounded while the body
    streams in (a declared Content-Length over the limit is refused before reading), and the
    whole body must arrive within ``limits.body_timeout_s``: 413 and 408 close the connection."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body: {int(declared)} bytes exceed this server's limit of {limit}",
                           code="body_too_large")
    if "json" not in request.headers.get("content-type", "application/json").lower():
        raise RequestError(415, "request body: expected Content-Type application/json")
    try:
        data = await asyncio.wait_for(_read_body(request, limit), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(408, f"request body: not received within {limits.body_timeout_s:g} s",
                           code="body_timeout") from None
    try:
        return jsonread.loads(data, "request body", max_bytes=limit, max_depth=limits.max_json_depth)
    except InputError as err:
        raise RequestError(400, str(err)) from None


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body: more than this server's limit of {limit} bytes",
                               code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the client disconnects (the body is fully read by now, so the
    next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def _error(status: int, message: str, param=None, code=None, headers=None) -> JSONResponse:
    return JSONResponse(protocol.error_body(message, status, param, code), status_code=status, headers=headers)


async def _request_error(request: Request, exc: RequestError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status in (408, 413):  # the body was not read to its end: the connection cannot be reused
        headers = {"Connection": "close"}
    return _error(exc.status, exc.message, exc.param, exc.code, headers)


async def _busy(request: Request, exc: Busy) -> Response:
    return _error(429, f"server busy: {exc}", code="busy", headers={"Retry-After": "1"})


async def _feather_error(request: Request, exc: FeatherError) -> Response:
    if isinstance(exc, (InputError, ConfigError)):  # the runtime refused what the client sent
        return _error(400, str(exc))
    log.error("runtime failure: %s", " ".join(str(exc).split()))
    return _error(500, f"{type(exc).__name__}: {exc}")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _error(500, "internal server error (see the server log)")

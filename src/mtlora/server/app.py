"""The HTTP API: an app factory whose lifespan owns the engine and the micro-batcher.

    mtlora serve examples/demo/mtlora.yaml --port 8000
    curl -s localhost:8000/v1/predict -d '{"inputs": "my parcel never arrived"}' -H 'content-type: application/json'
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mtlora.api import load_engine
from mtlora.config import ROUTER_ADAPTER, validate_task_name
from mtlora.engine import Engine
from mtlora.engine.inputs import NAMED_AND_ROUTED
from mtlora.errors import (
    AdapterNotFoundError,
    AdapterNotServableError,
    BaseModelMismatchError,
    CorruptAdapterError,
    EmptyTextError,
    InputError,
    MtloraError,
    UnknownTaskError,
    likely_meant,
)
from mtlora.routing import ROUTERS, router_class
from mtlora.server.batcher import MicroBatcher, QueueFull
from mtlora.server.metrics import Metrics
from mtlora.server.schemas import (
    BODY_FIELDS,
    INPUT_SHAPES,
    ErrorResponse,
    PredictRequest,
    Readiness,
    RouteRequest,
    engine_input,
    texts_of,
)
from mtlora.server.settings import ADMIN_TOKEN_ENV, CONFIG_ENV, SETTINGS_ENV, ServerSettings
from mtlora.tasks.base import has_text

PAGE = Path(__file__).with_name("page.html")
CLIENT_CLOSED = 499  # nginx's "client closed request": what /metrics counts for an answer nobody waited for
T = TypeVar("T")


class HTTPProblem(Exception):
    """A 4xx/503 answer with a JSON body that says what is wrong."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def create_app(engine_factory: Callable[[], Engine], settings: ServerSettings | None = None) -> FastAPI:
    """The app; `engine_factory` runs at start-up (in the lifespan), not at import."""
    settings = settings or ServerSettings()
    metrics = Metrics()
    started: dict[str, Any] = {}  # the engine and its micro-batcher, once the lifespan has made them

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started["engine"] = await asyncio.to_thread(engine_factory)
        started["batcher"] = MicroBatcher(started["engine"], settings, metrics)
        started["batcher"].start()
        yield
        await started["batcher"].stop()  # in-flight and queued inputs are answered first

    def engine() -> Engine:
        return started["engine"]

    def batcher() -> MicroBatcher:
        return started["batcher"]

    def ready() -> bool:
        return "engine" in started and batcher().running

    app = FastAPI(title="mtlora", summary="Multi-task LoRA adapters behind one endpoint", lifespan=lifespan)
    app.add_middleware(_MeasureAndLimit, settings=settings, metrics=metrics, routes=app.routes)
    # On the app itself, not through APIRouters: FastAPI 0.16x keeps an included router as one entry of
    # `app.routes`, hiding its routes' paths from `_MeasureAndLimit` and their request models from
    # `_answer_errors_as_json`.
    _add_page_and_health(app, engine, ready, metrics)
    _add_answers(app, engine, batcher, settings, metrics)
    _add_adapters_admin(app, engine)
    _answer_errors_as_json(app, metrics, lambda: started.get("engine"))
    return app


def _add_page_and_health(app: FastAPI, engine: Callable[[], Engine], ready: Callable[[], bool],
                         metrics: Metrics) -> None:
    """The try-it page, the liveness and readiness probes, and the Prometheus metrics."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={200: {"model": Readiness},
                                   503: {"model": Readiness,
                                         "description": "not ready: starting, stopping, or no adapter loaded"}})
    async def readyz() -> JSONResponse:
        if not ready():
            return JSONResponse({"ready": False, "tasks": []}, 503)
        if not (tasks := engine().tasks):  # all unloaded over HTTP: every input would be answered "unroutable"
            return JSONResponse({"ready": False, "tasks": [], "reason": "no adapter is loaded: load one with "
                                                                        "POST /v1/adapters/{name}"}, 503)
        return JSONResponse({"ready": True, "tasks": tasks})

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # some load balancers probe with HEAD
        app.add_api_route(path, probe, methods=["HEAD"], include_in_schema=False)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_answers(app: FastAPI, engine: Callable[[], Engine], batcher: Callable[[], MicroBatcher],
                 settings: ServerSettings, metrics: Metrics) -> None:
    """The tasks served, and predictions and routing decisions (both through the micro-batcher)."""

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        """The adapters loaded, each with its manifest (without stored example inputs)."""
        return {"tasks": [manifest.model_dump(mode="json", exclude={"example_inputs", "files"})
                          for manifest in engine().manifests().values()],
                "router": engine().default_router, "routers": list(ROUTERS)}

    @app.post("/v1/predict", responses=_errors(400, 404, 413, 422, 500, 503))
    async def predict(body: PredictRequest, request: Request) -> dict[str, Any]:
        """Answer one input or a list, with the named task or where the router sends each input."""
        items = body.inputs if isinstance(body.inputs, list) else [body.inputs]
        _check_inputs(items, settings)
        _check_names(engine(), body.task, body.router)
        try:
            results = await _unless_client_leaves(request, batcher().submit(
                [engine_input(i) for i in items], [body.task] * len(items), body.router))
        except QueueFull:
            raise _overloaded(settings) from None
        for result in results:
            metrics.answers.labels(result["task"] or "unroutable").inc()
            metrics.routes.labels(result["routed_by"], result.get("route_reading", "")).inc()
        return {"results": results} if isinstance(body.inputs, list) else {"result": results[0]}

    @app.post("/v1/route", responses=_errors(400, 404, 413, 422, 500, 503))
    async def route(body: RouteRequest, request: Request) -> dict[str, Any]:
        """Where an input would go, with the score of every candidate task."""
        _check_inputs([body.input], settings, field="input")
        _check_names(engine(), None, body.router)
        asked = engine().request(engine_input(body.input))
        try:
            (decision,) = await _unless_client_leaves(request, batcher().submit(
                [asked], [None], body.router, route_only=True))
        except QueueFull:
            raise _overloaded(settings) from None
        return {"task": decision.task, "router": decision.router, "confidence": decision.confidence,
                "scores": decision.scores, "reason": decision.reason or None, "reading": decision.reading}


def _add_adapters_admin(app: FastAPI, engine: Callable[[], Engine]) -> None:
    """Loading and unloading adapters at run time, behind the admin bearer token."""

    @app.post("/v1/adapters/{name}", responses=_errors(400, 401, 403, 404, 409, 422, 500))
    async def load_adapter(name: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        """Load (or reload) adapter `name` from the registry; `router` reads the learned router again, once
        `mtlora train-router` has retrained it. Needs the admin bearer token."""
        _check_admin(authorization)
        if name == ROUTER_ADAPTER:
            await asyncio.to_thread(engine().reload_router)
            return {"loaded": name, "tasks": engine().tasks}
        name = _checked_adapter_name(name)
        await asyncio.to_thread(engine().reload, name)
        return {"loaded": name, "tasks": engine().tasks}

    @app.delete("/v1/adapters/{name}", responses=_errors(400, 401, 403, 404, 422, 500))
    async def unload_adapter(name: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        """Unload adapter `name`. Needs the admin bearer token."""
        _check_admin(authorization)
        await asyncio.to_thread(engine().remove, _checked_adapter_name(name))
        return {"unloaded": name, "tasks": engine().tasks}


def _answer_errors_as_json(app: FastAPI, metrics: Metrics, engine: Callable[[], Engine | None]) -> None:
    """Every error, the app's own and FastAPI's, as `{"error": {"type", "message"}}` with its status.
    Call it once the routes exist: a misspelt body field is told the valid ones of its endpoint."""
    # FastAPI types an annotation as any type form; each endpoint's body here is a request model.
    bodies = {route.path: cast("type[BaseModel] | None", route.body_field.field_info.annotation)
              for route in app.routes if isinstance(route, APIRoute) and route.body_field is not None}

    @app.exception_handler(HTTPProblem)
    async def on_problem(request: Request, problem: HTTPProblem) -> JSONResponse:
        return _problem(problem, metrics)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = list(error.errors())
        details = [{"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in errors]
        headline = _validation_headline(errors, request.headers.get("content-type", ""),
                                        bodies.get(request.url.path))
        return _problem(HTTPProblem(422, "invalid_request", headline), metrics, details)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own 4xx (a body that is not UTF-8, an unknown path, a wrong method) in the same shape.
        kind = {400: "unreadable_body", 404: "no_such_endpoint", 405: "method_not_allowed"}.get(error.status_code,
                                                                                                "http_error")
        if isinstance(error.__cause__, ClientDisconnect):  # gone while sending its body: not a bad body
            return _problem(HTTPProblem(CLIENT_CLOSED, "client_closed_request", "the client closed the connection "
                                                                                "while sending its body"), metrics)
        message = _unreadable(error.__cause__) or str(error.detail)
        return _problem(HTTPProblem(error.status_code, kind, message, dict(error.headers or {})), metrics)

    @app.exception_handler(MtloraError)
    async def on_mtlora_error(request: Request, error: MtloraError) -> JSONResponse:
        problem = _as_problem(error)
        if (served := engine()) is not None:  # where the server keeps its files is none of a client's business
            problem.message = problem.message.replace(str(served.registry.root), "<registry>")
        return _problem(problem, metrics)

    @app.exception_handler(Exception)
    async def on_failure(request: Request, error: Exception) -> JSONResponse:
        # A fault of the server, not of the request (a failing kernel, out of memory): the client gets
        # JSON like every other error; Starlette still raises it on, so the server log has the traceback.
        return _problem(HTTPProblem(500, "internal_error", f"the server failed to answer ({type(error).__name__}); "
                                                           "its log has the details"), metrics)


_ERRORS = {
    400: "an unreadable body (not UTF-8, nested too deeply), or an invalid adapter name",
    401: "no admin bearer token",
    403: "a wrong admin token, or adapter management off",
    404: "an unknown task, router or adapter",
    409: "an adapter that cannot be served (damaged, of another base model, not plain LoRA)",
    413: "too many inputs, a text too long, or a body too large",
    422: "a request that is not valid: a body that is not the endpoint's JSON, an input the task cannot take (empty "
         "text, a shape it does not answer)",
    500: "a fault of the server (a failing kernel, out of memory); its log has the details",
    503: "the queue is full: retry after the Retry-After header's seconds",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """An endpoint's error answers for its OpenAPI schema, in the shape every error really has (not
    FastAPI's default `{"detail": [...]}`, which this app never sends)."""
    return {status: {"model": ErrorResponse, "description": _ERRORS[status]} for status in statuses}


class _MeasureAndLimit:
    """Counts and times every request, and refuses a body over `max_body_bytes`: at once when its
    Content-Length says so; a body without one (chunked) is read up to the limit before the app sees it.

    Plain ASGI rather than `@app.middleware("http")`, whose wrapper runs each response through extra
    tasks and memory streams: a cost paid on every request of a server that answers in milliseconds.
    """

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: Metrics, routes: list[BaseRoute]):
        self.app, self.settings, self.metrics, self.routes = app, settings, metrics, routes

    def _endpoint(self, scope: Scope) -> str:
        """The route a request is for, as declared (`/v1/adapters/{name}`): one series per endpoint in
        /metrics, however many URLs clients make up; a path no route has is "other"."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return getattr(route, "path", "other")
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = self._endpoint(scope)
        limit = self.settings.max_body_bytes
        status = 500  # unless a response starts: an exception escaped every handler

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        length = Headers(scope=scope).get("content-length")
        oversize = length if length is not None and length.isdigit() and int(length) > limit else None
        try:
            if length is None:
                body = await _read_body(receive, limit)
                if body is None:
                    oversize = f"over {limit}"
                else:
                    receive = _replay(body, receive)
            if oversize is not None:
                problem = HTTPProblem(413, "body_too_large", f"request body is {oversize} bytes; the limit is {limit}")
                await _problem(problem, self.metrics)(scope, receive, send_noting_status)
            else:
                await self.app(scope, receive, send_noting_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


async def _read_body(receive: Receive, limit: int) -> list[Message] | None:
    """The request's body messages, or None as soon as they pass `limit` bytes."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then listens to the client as usual."""
    pending = list(messages)

    async def replaying() -> Message:
        return pending.pop(0) if pending else await receive()

    return replaying


def create_app_from_env() -> FastAPI:
    """For `uvicorn --factory` with several workers: the project file comes from $MTLORA_CONFIG."""
    config = os.environ.get(CONFIG_ENV)
    if not config:
        raise RuntimeError(f"set {CONFIG_ENV} to the project file to serve")
    settings = ServerSettings.model_validate_json(os.environ.get(SETTINGS_ENV, "{}"))
    return create_app(lambda: load_engine(config), settings)


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, unless the client hangs up first (a timeout, a closed tab): then `work` is cancelled,
    its inputs still queued are dropped rather than run for nobody, and /metrics counts a 499."""
    answer = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_hang_up(request))
    try:
        await asyncio.wait((answer, left), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request cancelled itself (the server stopping hard): so is its work
        answer.cancel()
        raise
    finally:
        left.cancel()
    if not answer.done():
        answer.cancel()
        raise HTTPProblem(CLIENT_CLOSED, "client_closed_request", "the client closed the connection before its "
                                                                   "answer was ready")
    return answer.result()


async def _hang_up(request: Request) -> None:
    """Returns when the client disconnects. The body has been read: the server's next message is the
    disconnect (uvicorn's and httpx's alike)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.Event().wait()  # another server's way: stop listening rather than spin


def _check_inputs(items: list[Any], settings: ServerSettings, field: str = "inputs") -> None:
    """`items` as the body's `field` holds them (one input, or several: then each is named by its index)."""
    if not items:
        raise HTTPProblem(422, "invalid_request", f"{field}: give at least one input")
    if len(items) > settings.max_inputs:
        raise HTTPProblem(413, "too_many_inputs", f"{len(items)} inputs; the limit is {settings.max_inputs}")
    for i, item in enumerate(items):
        for name, text in texts_of(item).items():
            where = (f"{field}[{i}]" if len(items) > 1 else field) + (f".{name}" if name else "")
            if not has_text(text):
                raise HTTPProblem(422, "empty_text", f"{where}: the text is empty")
            if len(text) > settings.max_text_chars:
                raise HTTPProblem(413, "text_too_long", f"{where}: {len(text)} characters; the limit is "
                                                         f"{settings.max_text_chars}")


def _validation_headline(errors: list[dict[str, Any]], content_type: str, body: type[BaseModel] | None) -> str:
    """The problem a client should read first. An input may be a text, a {text, text_pair} or a
    {question, context} object, and the validator reports what each of those shapes finds wrong: name
    the shape the client came closest to (its complaints go deepest, and there are fewest of them).
    `body` is the endpoint's request model, whose fields a misspelt one is told."""
    if not errors:
        return "body: invalid"
    if errors[0]["type"] == "json_invalid":
        return f"body is not valid JSON: {errors[0].get('ctx', {}).get('error', errors[0]['msg'])}"
    if errors[0]["loc"] == ("body",) and "json" not in content_type:
        return "body: send a JSON object, with the header content-type: application/json"
    deepest = max(len(e["loc"]) for e in errors)
    shapes: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for e in errors:
        if len(e["loc"]) == deepest:
            shapes[e["loc"][:-1]].append(e)
    closest = min(shapes.values(), key=len)
    where = _field_path(closest[0]["loc"])
    in_an_input = closest[0]["loc"][1:2] in (("inputs",), ("input",))
    if in_an_input and all(e["type"].endswith("_type") for e in closest):  # not even the right type for any shape
        return f"{_field_path(closest[0]['loc'][:-1])}: expected a text, a {{text, text_pair}} or a " \
               "{question, context} object (or a list of them, for inputs)"
    if unknown := next((e for e in closest if e["type"] == "extra_forbidden"), None):
        return _unknown_field(unknown["loc"], INPUT_SHAPES.get(str(unknown["loc"][-2]), body))
    return f"{where}: {closest[0]['msg']}"


def _unreadable(cause: BaseException | None) -> str | None:
    """What FastAPI's bare "There was an error parsing the body" (a 400) was about, where its cause says."""
    if isinstance(cause, UnicodeDecodeError):
        return (f"body is not UTF-8 text: byte 0x{cause.object[cause.start]:02x} at offset {cause.start} "
                f"({cause.reason}); send the JSON encoded as UTF-8")
    if isinstance(cause, RecursionError):
        return "body nests its JSON arrays or objects too deeply to parse; send inputs as a flat list"
    return None


def _unknown_field(loc: tuple, model: type[BaseModel] | None) -> str:
    """pydantic says "Extra inputs are not permitted", where `inputs` is a field of this API."""
    if model is None:
        return f"{_field_path(loc)}: unknown field"
    if model in INPUT_SHAPES.values() and any(loc[-1] in shape.model_fields for shape in INPUT_SHAPES.values()):
        return f"{_field_path(loc).rpartition('.')[0]}: an input is a {{text, text_pair}} or a {{question, context}} " \
               "object, not a mix of the two"
    valid = list(model.model_fields)
    meant = likely_meant(loc[-1], valid)
    return f"{_field_path(loc)}: unknown field{f' (did you mean {meant!r}?)' if meant else ''}; valid fields: " \
           f"{', '.join(valid)}"


def _field_path(loc: tuple) -> str:
    """`('body', 'inputs', 'list[...]', 1, 'QAInput', 'context')` -> `inputs[1].context`: the body's own
    names, without the validator's names for the shapes it tried; the last is the field complained of,
    which may be one the client made up."""
    parts = loc[1:] if loc[:1] == ("body",) else loc
    path = ""
    for i, part in enumerate(parts):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in BODY_FIELDS or i == len(parts) - 1:
            path += f".{part}" if path else part
    return path or "body"


def _overloaded(settings: ServerSettings) -> HTTPProblem:
    return HTTPProblem(503, "overloaded", "the server is at capacity; retry shortly",
                       {"Retry-After": str(settings.retry_after_s)})


def _check_names(engine: Engine, task: str | None, router: str | None) -> None:
    if task is not None and not task.strip():
        raise InputError(f"task is empty: name a loaded task ({', '.join(engine.tasks)}), or leave task out to "
                         "route each input")
    if router is not None and not router.strip():
        raise InputError(f"router is empty: name one of {', '.join(ROUTERS)}, or leave router out for the "
                         "project's default")
    if task is not None and router is not None:
        raise InputError(NAMED_AND_ROUTED.format(task=task, router=router))
    if task is not None and task not in engine.tasks:
        raise UnknownTaskError("task", task, engine.tasks, where=" loaded on this server")
    if router is not None:
        router_class(router)  # an unknown name: UnknownTaskError listing the routers


def _check_admin(authorization: str | None) -> None:
    expected = os.environ.get(ADMIN_TOKEN_ENV)
    if not expected:
        raise HTTPProblem(403, "admin_disabled", f"adapter management is off: start the server with {ADMIN_TOKEN_ENV} "
                                                 "set")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:  # the scheme's name is case-insensitive (RFC 7235)
        raise HTTPProblem(401, "unauthorized", "send the admin token as 'Authorization: Bearer <token>'",
                          {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise HTTPProblem(403, "forbidden", "the admin token does not match")


def _checked_adapter_name(name: str) -> str:
    try:
        validate_task_name(name)
    except ValueError as error:
        raise HTTPProblem(400, "invalid_name", str(error)) from None
    if name == ROUTER_ADAPTER:
        raise HTTPProblem(400, "invalid_name", f"'{ROUTER_ADAPTER}' is the learned router, not a task: it loads when a "
                                               f"request uses it, and POST /v1/adapters/{ROUTER_ADAPTER} reads it "
                                               "again once `mtlora train-router` has retrained it")
    return name


def _as_problem(error: MtloraError) -> HTTPProblem:
    if isinstance(error, AdapterNotFoundError | UnknownTaskError):
        return HTTPProblem(404, "not_found", str(error))
    if isinstance(error, CorruptAdapterError | BaseModelMismatchError | AdapterNotServableError):
        return HTTPProblem(409, "adapter_unusable", str(error))
    if isinstance(error, EmptyTextError):  # one left once a task's prefix is cut off: "<summarize>"
        return HTTPProblem(422, "empty_text", str(error))
    if isinstance(error, InputError):
        return HTTPProblem(422, "bad_input", str(error))
    # Snake case like every other error type: RegistryError -> registry_error.
    return HTTPProblem(400, re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower(), str(error))


def _problem(problem: HTTPProblem, metrics: Metrics, details: list[dict] | None = None) -> JSONResponse:
    metrics.errors.labels(problem.kind).inc()
    error: dict[str, Any] = {"type": problem.kind, "message": problem.message}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, problem.status, headers=problem.headers)

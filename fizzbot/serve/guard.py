"""What every request passes before it reaches a route: the API key, the size of its body, and the
size of what the body holds.

An ASGI middleware on the application, so it runs before routing, before pydantic builds a single
object from the body and before anything is tokenised:

- `serve.api_key`: every path but `/healthz` (the docs, `/redoc` and `/openapi.json` included, and
  paths that do not exist, so that nothing about the API shows without the key) answers 401 unless
  the request sends `Authorization: Bearer <key>`, compared with `hmac.compare_digest` (constant time).
- `serve.max_body_bytes`: a larger body answers 413, from its Content-Length at once, or counted as it
  streams in (chunked uploads), without reading the rest.
- `serve.max_request_messages` and `serve.max_request_chars`: a JSON body with a longer list (a
  context of 100,000 messages) or more text in its strings than that (a 10 MB message) answers 400
  naming the field, in the time it takes to parse the JSON. A string that is not valid Unicode (a
  lone surrogate, which JSON's `\\ud800` escape can carry) answers 400 as well: no tokenizer, log or
  JSON encoder downstream could handle it.

The limits are the replica's own `serve.*` (`configure`, from the replica's constructor): each
replica is its own process, so one module-level setting per process is one per replica.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fizzbot.config import ServeConfig

OPEN_PATHS = frozenset({"/healthz"})
_limits: ServeConfig | None = None


def configure(limits: ServeConfig) -> None:
    """The limits this process's guard applies (the replica's `serve.*`)."""
    global _limits
    _limits = limits


def key_matches(authorization: str | bytes | None, key: str) -> bool:
    """`Authorization: Bearer <key>`, compared in constant time (as bytes: a header may hold any byte)."""
    if authorization is None:
        return False
    given = authorization if isinstance(authorization, bytes) else authorization.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, b"Bearer " + key.encode("utf-8"))


class RefusedError(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


def check_content(body: Any, max_items: int, max_chars: int) -> None:
    """Refuse (400) a parsed JSON body with a list longer than `max_items`, more than `max_chars`
    characters of text in all its strings together, or a string that is not valid Unicode.

    Iterative, so that a deeply nested body costs no recursion; the refusal names the field
    (`context`, `messages.3.content`, ...) as the other 400s do.
    """
    chars = 0
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            chars += len(value)
            if chars > max_chars:
                raise RefusedError(400, f"{where or 'body'}: the request holds more than {max_chars:,} characters of text "
                                   "(serve.max_request_chars)", "invalid_request_error", where or None)
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise RefusedError(400, f"{where or 'body'}: not valid Unicode (a lone surrogate "
                                       f"{value[exc.start]!r} at character {exc.start})", "invalid_request_error", where or None) from None
        elif isinstance(value, list):
            if len(value) > max_items:
                raise RefusedError(400, f"{where or 'body'}: {len(value):,} items, more than this server's limit of "
                                   f"{max_items:,} (serve.max_request_messages)", "invalid_request_error", where or None)
            stack.extend((item, f"{where}.{i}" if where else str(i)) for i, item in enumerate(value))
        elif isinstance(value, dict):
            for name, item in value.items():
                chars += len(name)
                stack.append((item, f"{where}.{name}" if where else name))


def install(app) -> None:
    """The guard on a FastAPI app, and its error answers in the app's OpenAPI schema (so that a client,
    or a fuzzer driven by the schema, knows every status a route may answer and the error shape). An
    exception no route expected is a JSON 500 too, not Starlette's plain-text page."""
    app.add_middleware(RequestGuard)

    async def unexpected(request, exc: Exception):
        from fizzbot.serve.app import error_response, logger

        logger.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error")

    app.add_exception_handler(Exception, unexpected)
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi


ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
        }
    },
}
ERRORS = {
    "400": "Bad input: a value over a server limit, an unknown speaker token, a request too large to read",
    "401": "Missing or wrong API key (when serve.api_key is set)",
    "413": "The request body is over serve.max_body_bytes",
    "404": "The request's `model` is not served here (GET /v1/models lists them)",
    "422": "A field missing or of the wrong type",
    "500": "Generation failed for this request (the others in its batch are unaffected)",
    "503": "The replica is busy (its queue is full) or shutting down: retry later",
    "504": "The request did not finish within serve.request_timeout_s",
}


def document_errors(schema: dict) -> dict:
    """Every route but /healthz answers the statuses of ERRORS with the one error shape."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for method, operation in operations.items():
            statuses = ("401",) if method == "get" else tuple(ERRORS)
            responses = operation.setdefault("responses", {})
            for status in statuses:
                responses[status] = {"description": ERRORS[status], "content": content}
    schema.get("components", {}).get("schemas", {}).pop("HTTPValidationError", None)
    schema.get("components", {}).get("schemas", {}).pop("ValidationError", None)
    return schema


class RequestGuard:
    """The ASGI middleware (installed with `app.add_middleware(RequestGuard)`)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        limits = _limits
        if scope["type"] != "http" or limits is None or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            headers = dict(scope.get("headers") or [])
            if limits.api_key and not key_matches(headers.get(b"authorization"), limits.api_key):
                raise RefusedError(401, "missing or wrong API key (send `Authorization: Bearer <key>`)", "authentication_error")
            if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
                await self.app(scope, receive, send)
                return
            declared = headers.get(b"content-length")
            if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_body_bytes:
                raise _too_large(limits)
            body = await _read_body(receive, limits)
            if body:
                try:
                    parsed = json.loads(body)
                except RecursionError:
                    raise RefusedError(400, "the JSON body is nested too deeply", "invalid_request_error") from None
                except ValueError:
                    parsed = None  # not JSON: the route answers that (422), in its own words
                if parsed is not None:
                    check_content(parsed, limits.max_request_messages, limits.max_request_chars)
        except RefusedError as refused:
            await _respond(refused, scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _too_large(limits: ServeConfig) -> RefusedError:
    return RefusedError(413, f"the request body is larger than this server's limit of {limits.max_body_bytes:,} bytes "
                        "(serve.max_body_bytes)", "invalid_request_error")


async def _read_body(receive, limits: ServeConfig) -> bytes:
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise _too_large(limits)
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


def _replay(body: bytes, receive):
    """`receive` for the app: the body read above, then whatever the client sends next (a disconnect)."""
    delivered = False

    async def replayed():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _respond(refused: RefusedError, scope, receive, send) -> None:
    from fizzbot.serve.app import error_response  # the one error shape of the API

    response = error_response(refused.status, refused.message, refused.type, refused.param)
    if refused.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if refused.status == 413:
        response.headers["Connection"] = "close"  # the rest of the body is not read
    if refused.status == 503:
        response.headers["Retry-After"] = "1"
    await response(scope, receive, send)


# --- in Serve's HTTP proxy ------------------------------------------------------------------------------


class ProxyErrors:
    """An ASGI middleware for Serve's HTTP proxy (`proxy_middlewares`): a request whose replica died
    before it answered (killed, out of memory) gets the API's JSON error, 503 with Retry-After (Serve
    is bringing another replica up), where the proxy would answer a plain-text 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
        if not started:
            refused = RefusedError(503, "the replica serving this request stopped before it answered (Serve is starting "
                                   "another); retry", "server_error")
            await _respond(refused, scope, receive, send)


def proxy_middlewares() -> list:
    """The proxy's middlewares: Serve calls this in each HTTP proxy it starts, named by the environment
    variable of CONTROLLER_OPTIONS (`HTTPOptions.middlewares` is gone from Ray Serve)."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyErrors)]


# `serve.start(controller_options=...)` (and `controller_options:` in a `serve run` config file): the
# controller's environment, which the proxies it starts inherit.
CONTROLLER_OPTIONS = {"runtime_env": {"env_vars": {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "fizzbot.serve.guard:proxy_middlewares"}}}

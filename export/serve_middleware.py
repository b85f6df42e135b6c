"""The ASGI middlewares of ``toon-serve``, outermost first: the access log and request metrics,
(CORS, Starlette's own, when origins are configured), then the API-key guard of ``/v1/*``.

Both are plain ASGI classes (no ``BaseHTTPMiddleware``), so request bodies stream through them
untouched. They read the facts the handlers record with :func:`export.serve_api.note` from
``scope["toon"]``.

Imports: starlette and the standard library.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from export.serve_api import error_response, note
from export.serve_config import ApiKeys
from export.serve_metrics import Metrics

access_log = logging.getLogger("toon.access")

ROUTES = {"/", "/v1/toonify", "/v1/model", "/healthz", "/readyz", "/metrics"}
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"}
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def route_label(path: str) -> str:
    """The metrics label of a path: the route itself, ``/static`` or ``other`` (so that
    scanners probing random paths cannot grow the metrics without bound)."""
    if path in ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


def method_label(method: str) -> str:
    """The metrics label of a method: a standard HTTP method itself, else ``other`` (any token
    is a valid method name: each new one would add a series for ever)."""
    return method if method in METHODS else "other"


class AccessLogMiddleware:
    """Outermost layer: a request id (``X-Request-ID``, kept when the client sends a sane one),
    the request metrics, and (``log_requests``) one JSON access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        info: dict[str, Any] = {"status": None, "bytes_in": 0, "bytes_out": 0}
        scope["toon"] = info
        headers = Headers(scope=scope)
        rid = headers.get("x-request-id", "")
        if not REQUEST_ID.fullmatch(rid):
            rid = uuid.uuid4().hex

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
                extra = [(b"x-request-id", rid.encode())]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            elif message["type"] == "http.response.body":
                info["bytes_out"] += len(message.get("body", b""))
            await send(message)

        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                info["bytes_in"] += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, receive_counted, send_logged)
        except Exception:
            info.setdefault("error", "internal")
            info["status"] = info["status"] or 500
            raise
        finally:
            self._record(scope, headers, info, rid, time.perf_counter() - t0)

    def _record(self, scope: Scope, headers: Headers, info: dict, rid: str, dt: float) -> None:
        status = info["status"] or 499  # nothing was sent: the client went away
        route = route_label(scope["path"])
        m = self.metrics
        method = method_label(scope["method"])
        m.inc("toon_requests_total", route=route, method=method, code=str(status))
        m.observe("toon_request_duration_seconds", dt, route=route)
        if info.get("error"):
            m.inc("toon_errors_total", kind=info["error"])
        if not self.log_requests:
            return
        client = scope.get("client")
        entry = {
            "event": "request",
            "request_id": rid,
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": scope["method"][:32],
            "path": scope["path"][:512],
            "query": scope.get("query_string", b"").decode("latin-1")[:512],
            "status": status,
            "duration_ms": round(dt * 1e3, 2),
            "bytes_in": info["bytes_in"],  # received, whatever the Content-Length said
            "bytes_out": info["bytes_out"],
            "user_agent": headers.get("user-agent", "")[:200],
        }
        declared = headers.get("content-length")
        if declared is not None and declared != str(info["bytes_in"]):
            entry["content_length"] = declared[:20]  # what the client announced, when it differs
        for key in ("faces", "error"):
            if key in info:
                entry[key] = info[key]
        access_log.info(entry)


class ApiKeyMiddleware:
    """With keys configured, ``/v1/*`` needs ``Authorization: Bearer KEY`` (else 401)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys.required and scope["path"].startswith("/v1/"):
            auth = Headers(scope=scope).get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not self.keys.ok(token.strip()):
                note(scope, error="unauthorized")
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or invalid API key: send 'Authorization: Bearer KEY'",
                    {"WWW-Authenticate": 'Bearer realm="toon"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

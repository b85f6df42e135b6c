"""The application behind ``toon-serve``: the exported ONNX model as a stateless HTTP service.

    from export.serve import create_app
    from export.serve_config import ServeConfig
    app = create_app(ServeConfig(model="toon.onnx"))   # an ASGI app; uvicorn runs it

Routes (errors are JSON ``{"error": "...", "kind": "..."}``, never a traceback):

- ``POST /v1/toonify``: the photo as the raw body or as the multipart file field ``image``.
  Query: ``mode=paste|crop``, ``max_faces=1..N``, ``format=png|jpeg|webp``, ``quality=1..100``,
  ``report=header|json``. Answers the image, with the per-face report as JSON in the
  ``X-Toon-Report`` header and stage timings in ``Server-Timing``; ``report=json`` answers one
  JSON document with the images in base64 instead.
- ``GET /v1/model`` (the model's ``toon.*`` metadata), ``GET /healthz``, ``GET /readyz``,
  ``GET /metrics`` (Prometheus text), ``GET /`` (a page to try the model).

Optional API keys guard ``/v1/*``; CORS is off unless origins are given; every request is logged
as one JSON line. The parts, one concern each:

- ``serve_config``: :class:`ServeConfig` and the API keys;
- ``serve_api``: the error answers and the query of ``/v1/toonify``;
- ``serve_codecs``: decoding uploads (whitelist, pixel limit) and encoding answers;
- ``serve_service``: :class:`ToonService`, the handlers and a request's way through them;
- ``serve_batch``: the micro-batcher; ``serve_metrics``: Prometheus metrics and JSON logs;
- ``serve_middleware``: the access log and the API-key guard;
- this module: the Starlette app (routes, middleware order, exception handlers, lifespan),
  and :func:`app_from_env`, the factory uvicorn's worker processes call.

Imports: starlette, numpy, pillow, onnxruntime (via ``export.runtime``), dlib (via
``faces.align``). Never torch.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import AsyncIterator
from urllib.parse import quote

from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

from export.runtime import Toonifier
from export.serve_api import ApiError, error_response, note
from export.serve_config import CONFIG_ENV, ServeConfig
from export.serve_middleware import AccessLogMiddleware, ApiKeyMiddleware
from export.serve_service import ToonService


async def _api_error(request: Request, exc: Exception) -> Response:
    """An :class:`ApiError` raised anywhere in a request: its JSON answer."""
    assert isinstance(exc, ApiError)
    note(request.scope, error=exc.kind)
    return error_response(exc.status, exc.kind, exc.message, exc.headers)


def _slash_redirect(request: Request) -> Response | None:
    """For a path that matches a route once its trailing slash is removed or added: a 307 to
    it with a *relative* ``Location`` (Starlette's own redirect builds an absolute URL from the
    client's ``Host`` header, which lets anyone mint links to another host). Else None."""
    path = request.url.path
    if path == "/":
        return None
    alt = path.rstrip("/") if path.endswith("/") else path + "/"
    if not alt.startswith("/") or alt.startswith("//"):
        return None
    scope = {**request.scope, "path": alt}
    if not any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes):
        return None
    query = request.scope.get("query_string", b"").decode("latin-1")
    location = quote(alt) + (f"?{query}" if query else "")
    return Response(status_code=307, headers={"Location": location})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, wrong method) as the same JSON answer; a path that
    differs from a route by a trailing slash is redirected."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404 and "app" in request.scope:
        redirect = _slash_redirect(request)
        if redirect is not None:
            return redirect
    kinds = {404: "not_found", 405: "method_not_allowed"}
    kind = kinds.get(exc.status_code, "bad_request")
    message = {
        404: f"no such path: {request.url.path}",
        405: f"method {request.method} not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    note(request.scope, error=kind)
    return error_response(exc.status_code, kind, message, exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """The last resort (uvicorn logs the traceback); toonify turns its own failures into
    ApiError 500 after logging them."""
    note(request.scope, error="internal")
    return error_response(500, "internal", "internal error; the server log has the details")


def create_app(config: ServeConfig, toonifier: Toonifier | None = None) -> Starlette:
    """The ASGI app for ``config`` (the model is loaded now; face models and warm-up at
    startup). ``toonifier`` reuses a loaded model."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    service = ToonService(config, toonifier)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    routes = [
        Route("/", service.index, methods=["GET"]),
        Route("/static/{name}", service.static, methods=["GET"]),
        Route("/v1/toonify", service.toonify, methods=["POST"]),
        Route("/v1/model", service.model_info, methods=["GET"]),
        Route("/healthz", service.healthz, methods=["GET"]),
        Route("/readyz", service.readyz, methods=["GET"]),
        Route("/metrics", service.metrics_text, methods=["GET"]),
    ]
    middleware = [
        Middleware(AccessLogMiddleware, metrics=service.metrics, log_requests=config.access_log)
    ]
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=["X-Toon-Report", "Server-Timing", "X-Request-ID", "Retry-After"],
                max_age=600,
            )
        )
    middleware.append(Middleware(ApiKeyMiddleware, keys=service.keys))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # done by _http_error, without trusting Host
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """The app for uvicorn worker processes: the config comes as JSON in ``$TOON_SERVE_CONFIG``
    (set by ``toon-serve``)."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"${CONFIG_ENV} is not set (start the service with toon-serve)")
    return create_app(ServeConfig.from_json(raw))

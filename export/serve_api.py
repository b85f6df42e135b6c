"""The HTTP contract of ``toon-serve`` that every layer shares: error answers and the query of
``POST /v1/toonify``.

Every failure is answered as JSON ``{"error": "one-line message", "kind": "machine_kind"}``
(:func:`error_response`); code anywhere in a request raises :class:`ApiError` to give one.
:func:`note` records facts about a request (error kind, faces, bytes in) for the access log and
the metrics, which the outermost middleware reads.

Imports: starlette and ``common.cli``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import Scope

from common.cli import ToonError
from export.serve_config import ServeConfig

OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_ALIASES = {"jpg": "jpeg"}
QUERY_KEYS = ("mode", "max_faces", "format", "quality", "report")


class ApiError(ToonError):
    """An answer to the client: HTTP status, a short machine-readable kind, one-line message."""

    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_response(
    status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON error body every failure uses."""
    return JSONResponse({"error": message, "kind": kind}, status_code=status, headers=headers)


def note(scope: Scope, **values: Any) -> None:
    """Attach facts about the request (error kind, faces) for the access log and metrics."""
    info = scope.get("toon")
    if isinstance(info, dict):
        info.update(values)


@dataclass(frozen=True)
class ToonifyOptions:
    """The query of ``POST /v1/toonify``."""

    mode: str = "paste"
    max_faces: int = 8
    format: str = "png"
    quality: int = 90
    report: str = "header"

    @classmethod
    def parse(cls, params: Mapping[str, str], config: ServeConfig) -> ToonifyOptions:
        """Read and check the query (:class:`ApiError` 400 naming the parameter)."""
        unknown = sorted(set(params) - set(QUERY_KEYS))
        if unknown:
            raise ApiError(
                400,
                "bad_request",
                f"unknown query parameter {unknown[0]!r} (known: {', '.join(QUERY_KEYS)})",
            )
        mode = params.get("mode", "paste")
        if mode not in ("paste", "crop"):
            raise ApiError(400, "bad_request", f"mode must be paste or crop, got {mode!r}")
        fmt = params.get("format", "png").lower()
        fmt = FORMAT_ALIASES.get(fmt, fmt)
        if fmt not in OUTPUT_FORMATS:
            raise ApiError(400, "bad_request", f"format must be png, jpeg or webp, got {fmt!r}")
        report = params.get("report", "header")
        if report not in ("header", "json"):
            raise ApiError(400, "bad_request", f"report must be header or json, got {report!r}")

        def integer(name: str, default: int, lo: int, hi: int) -> int:
            raw = params.get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                value = lo - 1
            if not lo <= value <= hi:
                raise ApiError(
                    400, "bad_request", f"{name} must be an integer from {lo} to {hi}, got {raw!r}"
                )
            return value

        max_faces = integer("max_faces", config.max_faces, 1, config.max_faces)
        quality = integer("quality", config.quality, 1, 100)
        return cls(mode, max_faces, fmt, quality, report)

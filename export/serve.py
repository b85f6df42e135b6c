"""The application behind ``toon-serve``: the exported ONNX model as a stateless HTTP service.

    from export.serve import ServeConfig, create_app
    app = create_app(ServeConfig(model="toon.onnx"))   # an ASGI app; uvicorn runs it

Routes (errors are JSON ``{"error": "...", "kind": "..."}``, never a traceback):

- ``POST /v1/toonify``: the photo as the raw body or as the multipart file field ``image``.
  Query: ``mode=paste|crop``, ``max_faces=1..N``, ``format=png|jpeg|webp``, ``quality=1..100``,
  ``report=header|json``. Answers the image, with the per-face report as JSON in the
  ``X-Toon-Report`` header and stage timings in ``Server-Timing``; ``report=json`` answers one
  JSON document with the images in base64 instead.
- ``GET /v1/model`` (the model's ``toon.*`` metadata), ``GET /healthz``, ``GET /readyz``,
  ``GET /metrics`` (Prometheus text), ``GET /`` (a page to try the model).

A request's way through: admission (at most ``max_queue`` requests in the service, else 503 with
``Retry-After``), the body (byte limit, read timeout), decoding (format whitelist, pixel limit)
and face alignment in a thread pool, the model in :class:`MicroBatcher`'s thread (the faces of
requests that arrive together share one ``Toonifier.run``), paste-back and encoding in the pool.
The event loop only moves bytes. Optional API keys guard ``/v1/*``; CORS is off unless origins
are given; every request is logged as one JSON line.

Imports: starlette, numpy, pillow, onnxruntime (via ``export.runtime``), dlib (via
``faces.align``). Never torch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import io
import json
import logging
import math
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from export.runtime import Toonifier
from export.serve_batch import BatchInfo, MicroBatcher
from export.serve_metrics import Metrics
from faces.image import AlignError

CONFIG_ENV = "TOON_SERVE_CONFIG"  # the JSON config handed to uvicorn worker processes
API_KEYS_ENV = "TOON_API_KEYS"  # comma- or newline-separated keys
STATIC_DIR = Path(__file__).parent / "static"

# Pillow format names accepted as input (JPEG also opens the multi-picture MPO files of phones).
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
INPUT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"
OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FORMAT_ALIASES = {"jpg": "jpeg"}
QUERY_KEYS = ("mode", "max_faces", "format", "quality", "report")
PNG_COMPRESS_LEVEL = 3  # zlib level: 6 (Pillow's default) costs ~2x the time for ~5% less size
RETRY_AFTER_S = 1
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

log = logging.getLogger("toon.serve")
access_log = logging.getLogger("toon.access")


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``toon-serve`` can be told; CLI flags map one to one to these fields."""

    model: str  # the .onnx file (toon-export onnx)
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0 in a container)
    port: int = 8000  # TCP port (0: any free port; the log says which)
    workers: int = 1  # uvicorn worker processes (each loads the model)
    max_batch: int = 8  # faces per model call
    batch_timeout_ms: float = 5.0  # longest a face waits for others to share its model call
    max_queue: int = 32  # requests in the service at once; more get 503 + Retry-After
    max_body_bytes: int = 20 * 2**20  # request body limit (413 above it)
    max_pixels: int = 40_000_000  # decoded image limit (413 above it: decompression bombs)
    max_faces: int = 8  # faces per photo, largest first (the default and the most ?max_faces=)
    read_timeout_s: float = 30.0  # a body not received within this gets 408
    threads: int | None = None  # ONNX Runtime intra-op threads (None: its default)
    cpu_threads: int = 4  # threads for decoding, alignment, paste-back and encoding
    device: str = "auto"  # auto, cpu or cuda
    quality: int = 90  # default JPEG/WebP quality
    api_key_file: str | None = None  # one key per line (# comments); also $TOON_API_KEYS
    cors_origins: tuple[str, ...] = ()  # allowed browser origins ("*" for any); none: CORS off
    access_log: bool = True  # one JSON line per request on stdout
    log_level: str = "info"
    forwarded_allow_ips: str | None = None  # proxies trusted for X-Forwarded-For (uvicorn's)

    def __post_init__(self) -> None:
        checks = [
            (self.workers >= 1, "workers must be at least 1"),
            (self.max_batch >= 1, "max_batch must be at least 1"),
            (self.batch_timeout_ms >= 0, "batch_timeout_ms must be >= 0"),
            (self.max_queue >= 1, "max_queue must be at least 1"),
            (self.max_body_bytes >= 1, "max_body_bytes must be at least 1"),
            (self.max_pixels >= 1, "max_pixels must be at least 1"),
            (self.max_faces >= 1, "max_faces must be at least 1"),
            (self.read_timeout_s > 0, "read_timeout_s must be > 0"),
            (self.cpu_threads >= 1, "cpu_threads must be at least 1"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (1 <= self.quality <= 100, "quality must be from 1 to 100"),
            (0 <= self.port <= 65535, "port must be from 0 to 65535"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}
        raw["cors_origins"] = tuple(raw.get("cors_origins") or ())
        return cls(**raw)


def load_api_keys(key_file: str | os.PathLike | None, environ: Mapping[str, str] = os.environ):
    """The API keys from ``$TOON_API_KEYS`` (comma or newline separated) and ``key_file`` (one
    per line, blank lines and ``#`` comments ignored). ``OSError`` when the file is unreadable."""
    keys = [k.strip() for k in re.split(r"[,\n]", environ.get(API_KEYS_ENV, "")) if k.strip()]
    if key_file:
        for line in Path(key_file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    return keys


# ---------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
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


def _note(scope: Scope, **values: Any) -> None:
    """Attach facts about the request (error kind, faces) for the access log and metrics."""
    info = scope.get("toon")
    if isinstance(info, dict):
        info.update(values)


# ---------------------------------------------------------------------------------------------
# Image handling (runs in the thread pool)


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """Request bytes -> upright (H, W, 3|4) uint8 RGB(A) and the Pillow format name; raises
    :class:`ApiError` (400 empty or not an image or corrupt, 413 too many pixels, 415 a format
    not accepted). The pixel count is checked from the header, before anything is decoded."""
    from faces.align import load_image

    if not data:
        raise ApiError(
            400,
            "empty_body",
            "empty body: send the photo as the request body or as the multipart file field 'image'",
        )
    Image.init()  # register every plugin (only the common ones are preloaded), once
    try:
        img = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except UnidentifiedImageError:
        other = _identify(data)
        if other:
            raise ApiError(
                415, "unsupported_format", f"unsupported image format {other}; send {INPUT_NAMES}"
            ) from None
        raise ApiError(400, "not_an_image", f"the body is not an image ({INPUT_NAMES})") from None
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", f"image exceeds {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(400, "corrupt_image", f"corrupt image ({_first_line(e)})") from None
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise ApiError(
                413,
                "too_many_pixels",
                f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}",
            )
        fmt = img.format or "?"
        try:
            img.load()
            rgb = load_image(img)
        except Image.DecompressionBombError:
            raise ApiError(413, "too_many_pixels", f"image exceeds {max_pixels} pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise ApiError(
                400, "corrupt_image", f"corrupt or truncated image ({_first_line(e)})"
            ) from None
    return rgb, fmt


def _identify(data: bytes) -> str | None:
    """The format Pillow would read ``data`` as (header only, nothing decoded), or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:  # anything at all: then it is simply not an image we know
        return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def encode_image(array: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 (H, W, 3|4) -> PNG (alpha kept), JPEG (alpha dropped) or WebP (alpha kept)."""
    img = Image.fromarray(np.ascontiguousarray(array))
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


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


# ---------------------------------------------------------------------------------------------
# The service


class ToonService:
    """The model, the face aligner, the batcher, the thread pool and the counters of one
    process, and the request handlers over them. :func:`create_app` wires it into Starlette."""

    def __init__(self, config: ServeConfig, toonifier: Toonifier | None = None) -> None:
        from faces.align import AlignConfig

        self.config = config
        self.toon = toonifier or Toonifier(
            config.model, threads=config.threads, device=config.device, max_batch=config.max_batch
        )
        self.align_config = AlignConfig(**self.toon.align_options())
        self._local = threading.local()  # one face detector per pool thread (see _aligner)
        self.metrics = _make_metrics(self)
        self.batcher = MicroBatcher(
            self.toon.run,
            max_batch=config.max_batch,
            timeout_s=config.batch_timeout_ms / 1e3,
            expecting=lambda: self.upstream > 0,
            on_batch=self._on_batch,
        )
        self.executor: ThreadPoolExecutor | None = None
        self.inflight = 0  # requests admitted and not finished (the bounded queue)
        self.upstream = 0  # admitted requests not yet at the model (the batcher may wait)
        self.ready = False
        keys = load_api_keys(config.api_key_file)
        self._key_digests = [hashlib.sha256(k.encode()).digest() for k in keys]
        self.page = {
            name: (STATIC_DIR / name).read_bytes()
            for name in ("index.html", "app.js", "style.css")
            if (STATIC_DIR / name).is_file()
        }

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the face models, warm the model up (batch 1 and ``max_batch``), start the
        model thread. Readiness follows."""
        self.executor = ThreadPoolExecutor(self.config.cpu_threads, thread_name_prefix="toon-cpu")
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        await loop.run_in_executor(self.executor, self._warm_up)
        self.batcher.start()
        self.ready = True
        log.info(
            {
                "event": "ready",
                "model": self.toon.path.name,
                "size": self.toon.size,
                "device": self.toon.device,
                "max_batch": self.config.max_batch,
                "max_queue": self.config.max_queue,
                "api_keys": len(self._key_digests),
                "warm_up_s": round(time.perf_counter() - t0, 3),
            }
        )

    def _warm_up(self) -> None:
        self._aligner()  # loads the landmark model (about 1 s) for every thread
        s = self.toon.size
        for n in sorted({1, self.config.max_batch}):
            self.toon.run(np.zeros((n, s, s, 3), np.uint8))

    async def stop(self) -> None:
        """Finish the model thread's work and close the thread pool."""
        self.ready = False
        await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None

    # -- helpers ----------------------------------------------------------------------------

    def key_ok(self, token: str) -> bool:
        """Whether ``token`` is one of the API keys (compared as digests in constant time)."""
        digest = hashlib.sha256(token.encode()).digest()
        return any(hmac.compare_digest(digest, d) for d in self._key_digests)

    @property
    def keys_required(self) -> bool:
        """Whether API keys are configured."""
        return bool(self._key_digests)

    async def _cpu(self, fn: Callable, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    def _on_batch(self, info: BatchInfo) -> None:
        self.metrics.observe("toon_batch_faces", info.faces)
        self.metrics.observe("toon_batch_requests", info.requests)
        self.metrics.observe("toon_model_seconds", info.model_s)

    def _aligner(self):
        """This thread's :class:`faces.align.Aligner`. dlib's HOG detector is not thread-safe
        (one detector used from several threads crashes the process), so each pool thread
        has its own; the 68-point landmark model, read-only, is loaded once and shared."""
        from faces.align import Aligner

        aligner = getattr(self._local, "aligner", None)
        if aligner is None:
            aligner = self._local.aligner = Aligner(self.align_config).load()
        return aligner

    def _align(self, rgb: np.ndarray, max_faces: int) -> list:
        """The largest ``max_faces`` faces of ``rgb``, aligned as the model expects."""
        aligner = self._aligner()
        faces = []
        for det in aligner.detector(rgb):
            faces.append(aligner.from_detection(rgb, det))
            if len(faces) >= max_faces:
                break
        return faces

    async def _read_body(self, request: Request) -> bytes:
        """The body, within the byte limit (413) and the read timeout (408)."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "bad_request", "invalid Content-Length header")
            if int(declared) > limit:
                raise ApiError(
                    413,
                    "body_too_large",
                    f"body of {declared} bytes is over the limit of {limit} bytes",
                )
        chunks: list[bytes] = []
        total = 0

        async def collect() -> None:
            nonlocal total
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise ApiError(
                        413, "body_too_large", f"body is over the limit of {limit} bytes"
                    )
                chunks.append(chunk)

        try:
            await asyncio.wait_for(collect(), self.config.read_timeout_s)
        except TimeoutError:
            raise ApiError(
                408, "timeout", f"body not received within {self.config.read_timeout_s:g} s"
            ) from None
        _note(request.scope, bytes_in=total)
        return b"".join(chunks)

    @staticmethod
    async def _image_bytes(request: Request, body: bytes) -> bytes:
        """The photo: the body itself, or the multipart file field ``image``."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            return body

        async def stream():
            yield body
            yield b""

        try:
            form = await MultiPartParser(
                request.headers,
                stream(),
                max_files=4,
                max_fields=16,
                max_part_size=64 * 1024,
            ).parse()
        except (MultiPartException, KeyError, ValueError) as e:
            msg = getattr(e, "message", None) or _first_line(e)
            raise ApiError(400, "bad_request", f"bad multipart body ({msg})") from None
        try:
            item = form.get("image")
            if item is None or isinstance(item, str):
                raise ApiError(
                    400, "bad_request", "the multipart body needs a file field named 'image'"
                )
            return await item.read()
        finally:
            await form.close()

    def _compose(self, rgb, faces, outputs, opts: ToonifyOptions) -> dict[str, Any]:
        """Paste back (or tile the crops) and encode; runs in the thread pool."""
        from faces.align import paste_back

        t0 = time.perf_counter()
        if opts.mode == "paste":
            image = paste_back(rgb, faces, list(outputs))
        else:
            image = np.concatenate(list(outputs), axis=1)
        t1 = time.perf_counter()
        data = encode_image(image, opts.format, opts.quality)
        crops = None
        if opts.report == "json":
            crops = [encode_image(o, opts.format, opts.quality) for o in outputs]
        t2 = time.perf_counter()
        return {
            "data": data,
            "crops": crops,
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "paste_s": t1 - t0,
            "encode_s": t2 - t1,
        }

    # -- handlers ---------------------------------------------------------------------------

    async def toonify(self, request: Request) -> Response:
        """``POST /v1/toonify``: options, admission (503 when the queue is full), then the
        pipeline; any unexpected failure is logged and answered as a JSON 500."""
        opts = ToonifyOptions.parse(request.query_params, self.config)
        if not self.ready:
            raise ApiError(
                503, "not_ready", "the model is loading", {"Retry-After": str(RETRY_AFTER_S)}
            )
        if self.inflight >= self.config.max_queue:
            raise ApiError(
                503,
                "overloaded",
                f"server busy ({self.inflight} requests in progress); retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self.inflight += 1
        self.upstream += 1
        try:
            return await self._toonify(request, opts)
        except (ApiError, ClientDisconnect):
            raise
        except AlignError as e:
            raise ApiError(422, "align_failed", f"cannot align the face: {e}") from None
        except Exception as e:
            log.error(
                {"event": "internal_error", "path": request.url.path, "error": repr(e)},
                exc_info=True,
            )
            raise ApiError(500, "internal", "internal error; the server log has details") from None

    async def _toonify(self, request: Request, opts: ToonifyOptions) -> Response:
        """Body, decode, align (thread pool), model (batcher), paste and encode (pool)."""
        at_model = False
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        try:
            try:
                body = await self._read_body(request)
            except ClientDisconnect:
                _note(request.scope, error="client_disconnected")
                return Response(status_code=499)
            data = await self._image_bytes(request, body)
            del body
            t1 = time.perf_counter()
            rgb, in_format = await self._cpu(decode_image, data, self.config.max_pixels)
            del data
            t2 = time.perf_counter()
            faces = await self._cpu(self._align, rgb, opts.max_faces)
            t3 = time.perf_counter()
            t.update(receive=t1 - t0, decode=t2 - t1, align=t3 - t2)
            self.metrics.observe("toon_stage_seconds", t2 - t1, stage="decode")
            self.metrics.observe("toon_stage_seconds", t3 - t2, stage="align")
            if not faces:
                raise ApiError(422, "no_face", "no face found in the image")
            self.upstream -= 1
            at_model = True
            crops = np.stack([f.crop[:, :, :3] for f in faces])
            outputs, batch = await self.batcher.submit(crops)
            out = await self._cpu(self._compose, rgb, faces, outputs, opts)
            t5 = time.perf_counter()
        finally:
            self.inflight -= 1
            if not at_model:
                self.upstream -= 1
        t.update(
            wait=batch.wait_s,
            model=batch.model_s,
            paste=out["paste_s"],
            encode=out["encode_s"],
            total=t5 - t0,
        )
        for stage in ("wait", "model", "paste", "encode"):
            self.metrics.observe("toon_stage_seconds", t[stage], stage=stage)
        self.metrics.inc("toon_faces_total", len(faces))
        _note(request.scope, faces=len(faces))
        return self._answer(opts, faces, batch, out, t, in_format)

    def _answer(
        self,
        opts: ToonifyOptions,
        faces: list,
        batch: BatchInfo,
        out: dict[str, Any],
        t: dict[str, float],
        in_format: str,
    ) -> Response:
        """The image with its report in ``X-Toon-Report``, or (``report=json``) one JSON
        document with the image and each face's crop in base64."""
        report = {
            "faces": [
                {
                    "box": [round(float(v), 1) for v in f.box],
                    "score": round(f.score, 3) if math.isfinite(f.score) else None,
                }
                for f in faces
            ],
            "mode": opts.mode,
            "format": opts.format,
            "input_format": in_format,
            "width": out["width"],
            "height": out["height"],
            "size": self.toon.size,
            "batch": {"faces": batch.faces, "requests": batch.requests},
            "timings_ms": {k: round(v * 1e3, 2) for k, v in t.items()},
        }
        timing = ", ".join(f"{k};dur={v * 1e3:.2f}" for k, v in t.items())
        headers = {"Server-Timing": timing, "Cache-Control": "no-store"}
        if opts.report == "json":
            for f, entry, crop in zip(faces, report["faces"], out["crops"], strict=True):
                entry["quad"] = [[round(float(x), 2), round(float(y), 2)] for x, y in f.quad]
                entry["crop"] = base64.b64encode(crop).decode("ascii")
            report["media_type"] = OUTPUT_FORMATS[opts.format]
            report["image"] = base64.b64encode(out["data"]).decode("ascii")
            return JSONResponse(report, headers=headers)
        headers["X-Toon-Report"] = json.dumps(report, separators=(",", ":"))
        return Response(out["data"], media_type=OUTPUT_FORMATS[opts.format], headers=headers)

    async def model_info(self, request: Request) -> Response:
        """``GET /v1/model``: the model's ``toon.*`` metadata and the serving settings."""
        meta = {k: v for k, v in self.toon.metadata.items() if k.startswith("toon.")}
        return JSONResponse(
            {
                "metadata": meta,
                "file": self.toon.path.name,
                "size": self.toon.size,
                "io": self.toon.io,
                "device": self.toon.device,
                "max_batch": self.config.max_batch,
                "max_faces": self.config.max_faces,
                "formats": sorted(OUTPUT_FORMATS),
            }
        )

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz``: the process answers (liveness)."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """``GET /readyz``: 200 once warmed up with the model thread running, else 503."""
        ok = self.ready and self.batcher.alive
        body = {
            "status": "ready" if ok else "not ready",
            "queue": self.inflight,
            "max_queue": self.config.max_queue,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_text(self, request: Request) -> Response:
        """``GET /metrics``: Prometheus text."""
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def index(self, request: Request) -> Response:
        """``GET /``: the try-it page."""
        return self._static("index.html")

    async def static(self, request: Request) -> Response:
        """``GET /static/NAME``: the page's script and style sheet."""
        return self._static(request.path_params["name"])

    def _static(self, name: str) -> Response:
        if name not in self.page:
            raise HTTPException(404)
        media = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
        kind = media[name.rsplit(".", 1)[1]] + "; charset=utf-8"
        headers = {
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": PAGE_CSP,
        }
        return Response(self.page[name], media_type=kind, headers=headers)


def _make_metrics(service: ToonService) -> Metrics:
    m = Metrics()
    m.counter("toon_requests_total", "HTTP requests by route, method and status code.")
    m.histogram(
        "toon_request_duration_seconds", "Request latency by route (seconds).", LATENCY_BUCKETS
    )
    m.counter("toon_errors_total", "Failed requests by kind of error.")
    m.counter("toon_faces_total", "Faces toonified.")
    m.histogram("toon_batch_faces", "Faces per model call.", COUNT_BUCKETS)
    m.histogram("toon_batch_requests", "Requests sharing one model call.", COUNT_BUCKETS)
    m.histogram("toon_model_seconds", "Model call duration (seconds).", LATENCY_BUCKETS)
    m.histogram("toon_stage_seconds", "Time per request stage (seconds).", LATENCY_BUCKETS)
    m.gauge("toon_queue_depth", "Requests in the service now.", lambda: service.inflight)
    m.gauge(
        "toon_queue_limit",
        "Requests the service holds before answering 503.",
        lambda: service.config.max_queue,
    )
    m.gauge("toon_ready", "1 when the service takes requests.", lambda: int(service.ready))
    m.gauge(
        "toon_model_info",
        "The model being served (always 1).",
        lambda: [({"size": str(service.toon.size), "device": service.toon.device}, 1.0)],
    )
    return m


# ---------------------------------------------------------------------------------------------
# Middleware and the app

_ROUTES = {"/", "/v1/toonify", "/v1/model", "/healthz", "/readyz", "/metrics"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class AccessLogMiddleware:
    """Outermost layer: a request id (``X-Request-ID``, kept when the client sends a sane one),
    the request metrics, and one JSON access-log line per request."""

    def __init__(self, app: ASGIApp, service: ToonService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        info: dict[str, Any] = {"status": None, "bytes_out": 0}
        scope["toon"] = info
        headers = Headers(scope=scope)
        rid = headers.get("x-request-id", "")
        if not _REQUEST_ID.fullmatch(rid):
            rid = uuid.uuid4().hex

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
                extra = [(b"x-request-id", rid.encode())]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            elif message["type"] == "http.response.body":
                info["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        except Exception:
            info.setdefault("error", "internal")
            info["status"] = info["status"] or 500
            raise
        finally:
            self._record(scope, headers, info, rid, time.perf_counter() - t0)

    def _record(self, scope: Scope, headers: Headers, info: dict, rid: str, dt: float) -> None:
        status = info["status"] or 499  # nothing was sent: the client went away
        route = _route_label(scope["path"])
        m = self.service.metrics
        m.inc("toon_requests_total", route=route, method=scope["method"], code=str(status))
        m.observe("toon_request_duration_seconds", dt, route=route)
        if info.get("error"):
            m.inc("toon_errors_total", kind=info["error"])
        if not self.service.config.access_log:
            return
        client = scope.get("client")
        declared = headers.get("content-length", "0")
        entry = {
            "event": "request",
            "request_id": rid,
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1")[:512],
            "status": status,
            "duration_ms": round(dt * 1e3, 2),
            "bytes_in": info.get("bytes_in", int(declared) if declared.isdigit() else 0),
            "bytes_out": info["bytes_out"],
            "user_agent": headers.get("user-agent", "")[:200],
        }
        for key in ("faces", "error"):
            if key in info:
                entry[key] = info[key]
        access_log.info(entry)


class ApiKeyMiddleware:
    """With keys configured, ``/v1/*`` needs ``Authorization: Bearer KEY`` (else 401)."""

    def __init__(self, app: ASGIApp, service: ToonService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.service.keys_required
            and scope["path"].startswith("/v1/")
        ):
            auth = Headers(scope=scope).get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not self.service.key_ok(token.strip()):
                _note(scope, error="unauthorized")
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or invalid API key: send 'Authorization: Bearer KEY'",
                    {"WWW-Authenticate": 'Bearer realm="toon"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(config: ServeConfig, toonifier: Toonifier | None = None) -> Starlette:
    """The ASGI app for ``config`` (the model is loaded now; face models and warm-up at
    startup). ``toonifier`` reuses a loaded model."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    service = ToonService(config, toonifier)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        _note(request.scope, error=exc.kind)
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kinds = {404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(exc.status_code, "bad_request")
        message = {
            404: f"no such path: {request.url.path}",
            405: f"method {request.method} not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        _note(request.scope, error=kind)
        return error_response(exc.status_code, kind, message, exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        # The last resort (uvicorn logs the traceback); toonify turns its own failures into
        # ApiError 500 after logging them.
        _note(request.scope, error="internal")
        return error_response(500, "internal", "internal error; the server log has the details")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
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
    middleware = [Middleware(AccessLogMiddleware, service=service)]
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
    middleware.append(Middleware(ApiKeyMiddleware, service=service))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            ApiError: api_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    app.state.service = service
    return app


def app_from_env() -> Starlette:
    """The app for uvicorn worker processes: the config comes as JSON in ``$TOON_SERVE_CONFIG``
    (set by ``toon-serve``)."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"${CONFIG_ENV} is not set (start the service with toon-serve)")
    return create_app(ServeConfig.from_json(raw))

"""The request handlers of ``toon-serve`` over one process's model, batcher, pool and counters.

A request's way through :meth:`ToonService.toonify`: the body (at most ``max_receiving`` being
received at once, each within the byte limit and the read timeout), admission of the complete
body (at most ``max_queue`` in the service; past either limit 503 with ``Retry-After``: a slow
client holds an upload slot, never a queue slot), a share of the decode budget (the pixels
decoded at once; a request waits for room), decoding (format whitelist, pixel limit) and face
alignment in a thread pool, the model in
:class:`MicroBatcher`'s thread (the faces of requests that arrive together share one
``Toonifier.run``), paste-back (through the person mask, as ``toon-infer`` pastes by
default) and encoding in the pool. The event loop only moves bytes.
:func:`export.serve.create_app` wires the handlers into Starlette.

Imports: starlette, numpy, onnxruntime (via ``export.runtime``), dlib (via ``faces.align``).
Never torch.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from export.runtime import Toonifier
from export.serve_api import OUTPUT_FORMATS, ApiError, ToonifyOptions, note
from export.serve_batch import BatchInfo, MicroBatcher
from export.serve_codecs import (
    DecodeBudget,
    decode_opened,
    encode_image,
    open_image,
    short_reason,
)
from export.serve_config import ApiKeys, ServeConfig, load_api_keys
from export.serve_metrics import LoopErrorLog, Metrics
from faces.align import PASTE_MODES, AlignConfig, Aligner, paste_back
from faces.image import AlignError

STATIC_DIR = Path(__file__).parent / "static"
PASTE_MASK = PASTE_MODES[0]  # toon-infer's default paste: the person, not the square
RETRY_AFTER_S = 1
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

log = logging.getLogger("toon.serve")


class ToonService:
    """The model, the face aligner, the batcher, the thread pool and the counters of one
    process, and the request handlers over them. :func:`export.serve.create_app` wires it into
    Starlette."""

    def __init__(self, config: ServeConfig, toonifier: Toonifier | None = None) -> None:
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
        self.receiving = 0  # requests receiving their body (bounded by max_receiving)
        self.inflight = 0  # complete bodies admitted and not finished (the bounded queue)
        self.decode_budget = DecodeBudget(config.decode_pixels)
        self.upstream = 0  # admitted requests not yet at the model (the batcher may wait)
        self.ready = False
        self.keys = ApiKeys(load_api_keys(config.api_key_file))
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
        loop.set_exception_handler(LoopErrorLog())  # e.g. failed accept(): no traceback floods
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
                "max_receiving": self.config.max_receiving,
                "decode_pixels": self.decode_budget.total,
                "max_connections": self.config.max_connections,
                "header_timeout_s": self.config.header_timeout_s,
                "api_keys": len(self.keys),
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

    async def _cpu(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` in the thread pool, awaited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    def _on_batch(self, info: BatchInfo) -> None:
        """Record a model call in the metrics (runs in the batcher's thread)."""
        self.metrics.observe("toon_batch_faces", info.faces)
        self.metrics.observe("toon_batch_requests", info.requests)
        self.metrics.observe("toon_model_seconds", info.model_s)

    def _aligner(self):
        """This thread's :class:`faces.align.Aligner`. dlib's HOG detector is not thread-safe
        (one detector used from several threads crashes the process), so each pool thread
        has its own; the 68-point landmark model, read-only, is loaded once and shared."""
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
        """The body, within the byte limit (413) and the read timeout (408). (The access log
        counts the bytes received, whatever the outcome.)"""
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
            msg = getattr(e, "message", None) or short_reason(e)
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
        t0 = time.perf_counter()
        if opts.mode == "paste":
            image = paste_back(rgb, faces, list(outputs), mode=PASTE_MASK)
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
        """``POST /v1/toonify``: options, the body (at most ``max_receiving`` at once, each
        within the read timeout), admission of the complete body into the queue (503 when
        full), then the pipeline; any unexpected failure is logged and answered as a JSON
        500."""
        opts = ToonifyOptions.parse(request.query_params, self.config)
        if not self.ready:
            raise ApiError(
                503, "not_ready", "the model is loading", {"Retry-After": str(RETRY_AFTER_S)}
            )
        self._admit(self.receiving, self.config.max_receiving, "uploads")
        self.receiving += 1
        t0 = time.perf_counter()
        try:
            body = await self._read_body(request)
        except ClientDisconnect:
            note(request.scope, error="client_disconnected")
            return Response(status_code=499)
        finally:
            self.receiving -= 1
        # Only a complete body takes a queue slot: a slow client cannot hold one.
        self._admit(self.inflight, self.config.max_queue, "requests")
        self.inflight += 1
        self.upstream += 1
        try:
            return await self._toonify(request, body, opts, t0)
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

    @staticmethod
    def _admit(count: int, limit: int, what: str) -> None:
        """503 with ``Retry-After`` when ``count`` has reached ``limit``."""
        if count >= limit:
            raise ApiError(
                503,
                "overloaded",
                f"server busy ({count} {what} in progress); retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )

    async def _toonify(
        self, request: Request, body: bytes, opts: ToonifyOptions, t0: float
    ) -> Response:
        """Decode within the decode budget, align (thread pool), model (batcher), paste and
        encode (pool); ``t0`` is when the body began to arrive."""
        at_model = False
        t: dict[str, float] = {}
        try:
            data = await self._image_bytes(request, body)
            del body
            img = await self._cpu(open_image, data, self.config.max_pixels)
            try:
                w, h = img.size
                t1 = time.perf_counter()
                reserved = await self.decode_budget.acquire(w * h)
            except BaseException:
                img.close()
                raise
            try:
                t_budget = time.perf_counter()
                rgb, in_format = await self._cpu(decode_opened, img, self.config.max_pixels)
                del data, img
                t2 = time.perf_counter()
                faces = await self._cpu(self._align, rgb, opts.max_faces)
                t3 = time.perf_counter()
                t.update(receive=t1 - t0, budget=t_budget - t1, decode=t2 - t_budget)
                t.update(align=t3 - t2)
                self.metrics.observe("toon_stage_seconds", t_budget - t1, stage="budget")
                self.metrics.observe("toon_stage_seconds", t2 - t_budget, stage="decode")
                self.metrics.observe("toon_stage_seconds", t3 - t2, stage="align")
                if not faces:
                    raise ApiError(422, "no_face", "no face found in the image")
                self.upstream -= 1
                at_model = True
                crops = np.stack([f.crop[:, :, :3] for f in faces])
                outputs, batch = await self.batcher.submit(crops)
                out = await self._cpu(self._compose, rgb, faces, outputs, opts)
                del rgb
            finally:
                self.decode_budget.release(reserved)
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
        note(request.scope, faces=len(faces))
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
            "receiving": self.receiving,
            "max_receiving": self.config.max_receiving,
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
    """The service's metrics: request, error, batch and stage figures, and gauges that read the
    queue, readiness and the model from ``service`` when rendered."""
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
    m.gauge(
        "toon_queue_depth",
        "Requests past their upload in the service now.",
        lambda: service.inflight,
    )
    m.gauge(
        "toon_queue_limit",
        "Requests the service holds before answering 503.",
        lambda: service.config.max_queue,
    )
    m.gauge("toon_receiving", "Requests receiving their body now.", lambda: service.receiving)
    m.gauge(
        "toon_receiving_limit",
        "Bodies received at once before answering 503.",
        lambda: service.config.max_receiving,
    )
    m.gauge(
        "toon_decode_pixels",
        "Pixels of the images being worked on now (the decode budget in use).",
        lambda: service.decode_budget.held,
    )
    m.gauge(
        "toon_decode_waiting",
        "Requests waiting for room in the decode budget.",
        lambda: service.decode_budget.waiting,
    )
    m.gauge("toon_ready", "1 when the service takes requests.", lambda: int(service.ready))
    m.gauge(
        "toon_model_info",
        "The model being served (always 1).",
        lambda: [({"size": str(service.toon.size), "device": service.toon.device}, 1.0)],
    )
    return m

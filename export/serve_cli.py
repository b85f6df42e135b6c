"""``toon-serve``: the exported ONNX model as an HTTP service (Starlette app run by uvicorn).

    toon-serve --model toon.onnx                          # http://127.0.0.1:8000/
    toon-serve --model toon.onnx --host 0.0.0.0 --workers 2 --api-key-file keys.txt
    curl --data-binary @photo.jpg 'http://127.0.0.1:8000/v1/toonify?format=jpeg' -o toon.jpg

The model comes from ``--model``, else ``$TOON_MODEL``, ``./toon.onnx`` or
``~/.local/share/toon-distill/toon.onnx``. API keys: ``$TOON_API_KEYS`` (comma separated) and/or
``--api-key-file``; with any key set, ``/v1/*`` needs ``Authorization: Bearer KEY``. Logs are
JSON lines: the server's on stderr, one access line per request on stdout.

Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 1 when the model, the face models or
the API keys cannot be loaded (a key source set but empty included) or the port cannot be
bound, 2 for usage errors. Without the ``serve`` extra (starlette, uvicorn, python-multipart)
it says how to install it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from dataclasses import asdict, replace

from common.cli import error_line, run_command
from export.runtime import ModelError, Toonifier, default_model_path
from export.serve_config import CONFIG_ENV, ServeConfig, ServeError, load_api_keys

PROG = "toon-serve"


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag maps to a field of ``export.serve_config.ServeConfig``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the exported ONNX model over HTTP: POST /v1/toonify, GET /v1/model, "
        "/healthz, /readyz, /metrics, and a page to try it at /.",
        epilog="Model lookup without --model: $TOON_MODEL, ./toon.onnx, "
        "~/.local/share/toon-distill/toon.onnx. API keys: $TOON_API_KEYS and --api-key-file.",
    )
    p.add_argument("--model", default=None, help="the .onnx model (see lookup below)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--max-batch", type=int, default=8, help="faces per model call (default 8)")
    p.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=5.0,
        help="longest a face waits for others to share its model call (default 5)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="requests held at once per worker, counted once their body has arrived; more "
        "get 503 + Retry-After (default 32)",
    )
    p.add_argument(
        "--max-receiving",
        type=int,
        default=64,
        help="requests receiving their body at once per worker (slow uploads wait here, not "
        "in the queue); more get 503 + Retry-After (default 64)",
    )
    p.add_argument(
        "--max-body-mb", type=float, default=20.0, help="request body limit in MiB (default 20)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="decoded image limit in pixels (default 40000000)",
    )
    p.add_argument(
        "--max-decode-pixels",
        type=int,
        default=None,
        help="pixels of all the images a worker decodes and works on at once (a request that "
        "does not fit waits; bounds memory); at least --max-pixels (default: --max-pixels)",
    )
    p.add_argument(
        "--max-faces", type=int, default=8, help="faces per photo, largest first (default 8)"
    )
    p.add_argument(
        "--read-timeout", type=float, default=30.0, help="seconds to receive a body (default 30)"
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds for a connection to send a request's line and headers, after it opens "
        "and after each answer; then it is closed (default 10)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        help="open connections per worker, kept under the open-file limit; past it the "
        "longest idle one is closed (default 1000)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime CPU threads per worker (default: cores / workers)",
    )
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=4,
        help="threads for decoding, face alignment and encoding (default 4)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quality", type=int, default=90, help="default JPEG/WebP quality (90)")
    p.add_argument("--api-key-file", default=None, help="API keys, one per line")
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser calls from ORIGIN (repeatable; '*' for any); default: CORS off",
    )
    p.add_argument("--no-access-log", action="store_true", help="no per-request log lines")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")
    p.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxies trusted for X-Forwarded-For (uvicorn's; default 127.0.0.1)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=serve)
    return p


def serve(args: argparse.Namespace) -> int:
    """Check everything that can fail (the serve extra, the config, the key file, the face
    models, the model), then run uvicorn until a signal stops it."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ServeError(
            f"the service needs the serve extra ({e.name} missing): "
            "pip install 'toon-distill[serve]'"
        ) from None
    from export.serve import create_app
    from export.serve_metrics import log_config
    from export.serve_net import ConnectionLimits, ServeProtocol, connection_cap
    from faces.detect import PREDICTOR_FILE, model_file

    model = args.model or default_model_path()
    if model is None:
        raise ModelError(
            "no model: pass --model FILE or set TOON_MODEL (make one with "
            "'toon-export onnx --student student.safetensors --out toon.onnx')"
        )
    threads = args.threads
    if threads is None and args.workers > 1:
        threads = max(1, (os.cpu_count() or 1) // args.workers)
    try:
        config = ServeConfig(
            model=str(model),
            host=args.host,
            port=args.port,
            workers=args.workers,
            max_batch=args.max_batch,
            batch_timeout_ms=args.batch_timeout_ms,
            max_queue=args.max_queue,
            max_receiving=args.max_receiving,
            max_body_bytes=int(args.max_body_mb * 2**20),
            max_pixels=args.max_pixels,
            max_decode_pixels=args.max_decode_pixels,
            max_faces=args.max_faces,
            read_timeout_s=args.read_timeout,
            header_timeout_s=args.header_timeout,
            max_connections=args.max_connections,
            threads=threads,
            cpu_threads=args.cpu_threads,
            device=args.device,
            quality=args.quality,
            api_key_file=args.api_key_file,
            cors_origins=tuple(args.cors_origin),
            access_log=not args.no_access_log,
            log_level=args.log_level,
            forwarded_allow_ips=args.forwarded_allow_ips,
        )
    except ValueError as e:  # a bad flag value: a usage error
        print(f"{PROG}: error: {error_line(e)}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(asdict(config), indent=2))
        return 0
    load_api_keys(config.api_key_file)  # ServeError for a source with no keys: never run open
    model_file(PREDICTOR_FILE)  # fails early, in one line, when the landmark model is missing
    toon = Toonifier(
        config.model, threads=threads, device=config.device, max_batch=config.max_batch
    )
    try:
        config = replace(config, max_connections=connection_cap(config.max_connections))
    except ValueError as e:
        raise ServeError(error_line(e)) from None
    limits = ConnectionLimits(config.header_timeout_s, config.max_connections)
    common = dict(
        host=config.host,
        port=config.port,
        log_config=log_config(config.log_level, config.access_log),
        access_log=False,  # the app writes its own JSON access log
        server_header=False,
        forwarded_allow_ips=config.forwarded_allow_ips,
        timeout_graceful_shutdown=30,
        # uvicorn's h11 protocol with a request-head timeout and a connection cap
        http=functools.partial(ServeProtocol, limits=limits),
        timeout_keep_alive=min(5.0, config.header_timeout_s),
    )
    try:
        if config.workers > 1:
            del toon  # each worker process loads its own copy
            os.environ[CONFIG_ENV] = config.to_json()
            uvicorn.run("export.serve:app_from_env", factory=True, workers=config.workers, **common)
        else:
            uvicorn.run(create_app(config, toonifier=toon), **common)
    except SystemExit as e:  # uvicorn exits 3 when it cannot bind or start (it logged why)
        return 0 if not e.code else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``toon-serve`` (exit status: see the module docstring)."""
    return run_command(PROG, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())

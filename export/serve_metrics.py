"""Observability for ``toon-serve``: Prometheus metrics of one process and JSON log lines.

    m = Metrics()
    m.counter("toon_requests_total", "HTTP requests.")
    m.inc("toon_requests_total", route="/v1/toonify", code="200")
    text = m.render()                                    # Prometheus text format 0.0.4

    logging.config.dictConfig(log_config("info"))       # uvicorn's and the service's logs as JSON
    loop.set_exception_handler(LoopErrorLog())          # asyncio's errors: no traceback floods

Imports: the standard library only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, then ``message`` (or the
    record's dict when the message is a dict), and ``exc`` with the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname.lower()}
        out["logger"] = record.name
        if isinstance(record.msg, dict):
            out.update(record.msg)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def log_config(level: str = "info", access: bool = True) -> dict[str, Any]:
    """``logging.config.dictConfig`` settings for uvicorn and the service: JSON lines, server
    messages on stderr and the access log (``toon.access``) on stdout."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "export.serve_metrics.JsonLogFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            "toon.serve": {"handlers": ["stderr"], "level": level, "propagate": False},
            "asyncio": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "toon.access": {
                "handlers": ["stdout"] if access else [],
                "level": "INFO",
                "propagate": False,
            },
        },
    }


class Metrics:
    """Counters, histograms and gauges of one process, rendered as Prometheus text (0.0.4).
    Thread-safe: the batcher thread records model calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: dict[str, tuple[str, str, tuple[float, ...]]] = {}
        self._values: dict[str, dict[tuple, Any]] = {}
        self._gauges: dict[str, Callable[[], Any]] = {}

    def counter(self, name: str, help: str) -> None:
        """Declare a counter."""
        self._meta[name] = ("counter", help, ())
        self._values[name] = {}

    def histogram(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        """Declare a histogram with upper bucket bounds ``buckets`` (+Inf is implied)."""
        self._meta[name] = ("histogram", help, tuple(buckets))
        self._values[name] = {}

    def gauge(self, name: str, help: str, read: Callable[[], Any]) -> None:
        """A gauge read when rendered: ``read()`` gives a number or ``[(labels, value)]``."""
        self._meta[name] = ("gauge", help, ())
        self._gauges[name] = read

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to a counter's series ``labels``."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation in a histogram's series ``labels``."""
        key = tuple(sorted(labels.items()))
        buckets = self._meta[name][2]
        with self._lock:
            series = self._values[name]
            h = series.get(key)
            if h is None:
                h = series[key] = [[0] * len(buckets), 0.0, 0]
            for i, le in enumerate(buckets):
                if value <= le:
                    h[0][i] += 1
            h[1] += value
            h[2] += 1

    def value(self, name: str, **labels: str) -> float:
        """A counter's value (tests and benchmarks)."""
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    @staticmethod
    def _labels(pairs: Mapping[str, str] | tuple, extra: tuple = ()) -> str:
        items = list(pairs.items() if isinstance(pairs, Mapping) else pairs) + list(extra)
        if not items:
            return ""
        esc = [
            (k, str(v).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n"))
            for k, v in items
        ]
        return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"

    def render(self) -> str:
        """Everything, in the Prometheus text format."""
        lines: list[str] = []
        with self._lock:
            for name, (kind, help, buckets) in self._meta.items():
                lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
                if kind == "gauge":
                    read = self._gauges[name]()
                    for labels, v in read if isinstance(read, list) else [({}, read)]:
                        lines.append(f"{name}{self._labels(labels)} {_num(v)}")
                elif kind == "counter":
                    for key, v in sorted(self._values[name].items()):
                        lines.append(f"{name}{self._labels(key)} {_num(v)}")
                else:
                    for key, (counts, total, n) in sorted(self._values[name].items()):
                        for le, c in zip(buckets, counts, strict=True):
                            le_label = self._labels(key, (("le", f"{le:g}"),))
                            lines.append(f"{name}_bucket{le_label} {c}")
                        lines.append(f"{name}_bucket{self._labels(key, (('le', '+Inf'),))} {n}")
                        lines.append(f"{name}_sum{self._labels(key)} {_num(total)}")
                        lines.append(f"{name}_count{self._labels(key)} {n}")
        return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    """A sample value in full precision (integers without a fraction)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


class LoopErrorLog:
    """An asyncio exception handler: one JSON log line per error, no traceback, and for each
    kind of message at most one line every ``every_s`` seconds (the next line says how many
    were left out). ``socket.accept() out of system resource``, for one, repeats per attempt."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "event loop error")
        now = time.monotonic()
        if now - self._last.get(message, -1e9) < self.every_s:
            self._skipped[message] = self._skipped.get(message, 0) + 1
            return
        if len(self._last) > 256:  # messages that embed a changing detail: forget old ones
            self._last.clear()
        self._last[message] = now
        entry: dict[str, Any] = {"event": "loop_error", "message": message}
        exc = context.get("exception")
        if exc is not None:
            entry["error"] = repr(exc)[:300]
        skipped = self._skipped.pop(message, 0)
        if skipped:
            entry["suppressed"] = skipped
        logging.getLogger("toon.serve").error(entry)

"""What ``toon-serve`` is told: the service's configuration and its API keys.

    config = ServeConfig(model="toon.onnx", max_batch=8)     # ValueError for a bad value
    keys = ApiKeys(load_api_keys(config.api_key_file))      # $TOON_API_KEYS and the key file
    keys.ok(token)                                          # constant-time check

The configuration travels to uvicorn worker processes as JSON in ``$TOON_SERVE_CONFIG``
(:meth:`ServeConfig.to_json` / :meth:`ServeConfig.from_json`).

Imports: the standard library and ``common.cli``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from common.cli import ToonError

CONFIG_ENV = "TOON_SERVE_CONFIG"  # the JSON config handed to uvicorn worker processes
API_KEYS_ENV = "TOON_API_KEYS"  # comma- or newline-separated keys
KEY_CHARS = re.compile(r"[\x20-\x7e]+")  # what an Authorization header carries: printable ASCII


class ServeError(ToonError):
    """The service cannot start: the serve extra is missing, or an API key source cannot be
    used (one-line message)."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``toon-serve`` can be told; CLI flags map one to one to these fields."""

    model: str  # the .onnx file (toon-export onnx)
    host: str = "127.0.0.1"  # address to listen on (0.0.0.0 in a container)
    port: int = 8000  # TCP port (0: any free port; the log says which)
    workers: int = 1  # uvicorn worker processes (each loads the model)
    max_batch: int = 8  # faces per model call
    batch_timeout_ms: float = 5.0  # longest a face waits for others to share its model call
    max_queue: int = 32  # requests past their upload at once; more get 503 + Retry-After
    max_receiving: int = 64  # requests receiving their body at once; more get 503 + Retry-After
    max_body_bytes: int = 20 * 2**20  # request body limit (413 above it)
    max_pixels: int = 40_000_000  # decoded image limit (413 above it: decompression bombs)
    max_faces: int = 8  # faces per photo, largest first (the default and the most ?max_faces=)
    max_decode_pixels: int | None = None  # pixels of the images worked on at once (None:
    # max_pixels); a request whose image does not fit waits for others to finish
    read_timeout_s: float = 30.0  # a body not received within this gets 408
    header_timeout_s: float = 10.0  # a connection with no request head within this is closed
    max_connections: int = 1000  # open connections per worker (kept under the open-file limit)
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
            (self.max_receiving >= 1, "max_receiving must be at least 1"),
            (
                self.max_decode_pixels is None or self.max_decode_pixels >= self.max_pixels,
                "max_decode_pixels must be at least max_pixels",
            ),
            (self.header_timeout_s > 0, "header_timeout_s must be > 0"),
            (self.max_connections >= 1, "max_connections must be at least 1"),
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

    @property
    def decode_pixels(self) -> int:
        """The decode budget: ``max_decode_pixels``, by default ``max_pixels``."""
        return self.max_decode_pixels or self.max_pixels

    def to_json(self) -> str:
        """The config as JSON (for ``$TOON_SERVE_CONFIG``)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """The config from :meth:`to_json`'s JSON; unknown keys are ignored."""
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}
        raw["cors_origins"] = tuple(raw.get("cors_origins") or ())
        return cls(**raw)


def load_api_keys(
    key_file: str | os.PathLike | None, environ: Mapping[str, str] = os.environ
) -> list[str]:
    """The API keys from ``$TOON_API_KEYS`` (comma or newline separated) and ``key_file`` (one
    per line, blank lines and ``#`` comments ignored).

    A source that is configured but holds no key (``TOON_API_KEYS=" , "``, an empty file) is a
    :class:`ServeError`: the service would otherwise run open while its operator believes it
    guarded. So is a key that no HTTP client could send (not printable ASCII) and an unreadable
    file."""
    keys: list[str] = []
    raw = environ.get(API_KEYS_ENV)
    if raw is not None:
        env_keys = [k.strip() for k in re.split(r"[,\n]", raw) if k.strip()]
        if not env_keys:
            raise ServeError(
                f"${API_KEYS_ENV} is set but holds no API key; "
                "set keys (comma separated) or unset it to run without keys"
            )
        keys += env_keys
    if key_file:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise ServeError(f"cannot read the API key file {key_file}: {reason}") from None
        file_keys = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        if not file_keys:
            raise ServeError(f"{key_file}: no API keys in the file")
        keys += file_keys
    for i, key in enumerate(keys, 1):
        if not KEY_CHARS.fullmatch(key):
            raise ServeError(
                f"API key {i} has characters an Authorization header cannot carry "
                "(use printable ASCII)"
            )
    return keys


class ApiKeys:
    """The keys that open ``/v1/*``, kept only as sha256 digests and compared in constant
    time. With no keys, nothing is required."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def required(self) -> bool:
        """Whether any key is configured (then ``/v1/*`` needs one)."""
        return bool(self._digests)

    def ok(self, token: str) -> bool:
        """Whether ``token`` is one of the keys."""
        digest = hashlib.sha256(token.encode()).digest()
        return any(hmac.compare_digest(digest, d) for d in self._digests)

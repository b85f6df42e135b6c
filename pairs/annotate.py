"""``toon-pairs annotate``: hand landmarks in a browser page, for faces the detector misses.

    toon-pairs annotate game.report.json     # the images under need_landmarks of an align report
    toon-pairs annotate drawings/            # every image of a folder

A small local web page (bound to 127.0.0.1 only) shows each image; four clicks give the eye
centres and mouth corners in the order of the ``--landmarks`` file, ``eye_left``, ``eye_right``,
``mouth_left``, ``mouth_right`` ("left" is the image's left, the subject's right), with undo and
a preview of the aligned crop, computed here with :mod:`faces.align` exactly as ``align`` will
compute it. Saving merges the image's entry into the landmarks JSON that ``toon-pairs align
--landmarks`` reads (written atomically; other entries are kept), keyed by the image's path
relative to align's input folder::

    {"nested/drawn.png": {"eye_left": [x, y], "eye_right": [x, y],
                          "mouth_left": [x, y], "mouth_right": [x, y]}}

Coordinates are pixel indices of the upright image (EXIF applied): pixel (i, j) has its centre
at x = j, y = i, the convention of dlib's landmarks (:mod:`faces.warp`).

The server is the standard library's ``http.server``, not the Starlette of ``toon-serve``:
``toon-pairs`` is installed without the ``serve`` extra, and one user on one machine needs no
more. Requests are refused unless their ``Host`` is the loopback address (a web page elsewhere
cannot reach the server through DNS rebinding), and changes need a JSON body (which a
cross-site form cannot send without the browser asking first).

Routes: ``GET /`` (the page), ``GET /static/NAME``, ``GET /api/state`` (the images, the crop
settings, the landmarks file and what it holds), ``GET /api/image/I`` (image I as PNG, as align
sees it: upright, transparency over the background colour), ``POST /api/preview`` and
``POST /api/save`` with ``{"index": I, "points": [[x, y] x 4]}`` (the crop as PNG; the saved
entry). Errors are JSON ``{"error": "one line"}``.
"""

from __future__ import annotations

import functools
import io
import json
import re
import threading
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageColor

from common.files import atomic_write_text
from faces.align import AlignConfig, Aligner
from faces.image import AlignError, composite, load_image
from pairs.prepare import DATASET_ALIGN, find_images, load_landmarks_file

POINT_NAMES = ("eye_left", "eye_right", "mouth_left", "mouth_right")  # parse_landmarks' keys
STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
MAX_BODY = 64 << 10  # bytes of a JSON request body
DECIMALS = 2  # saved coordinates are rounded to this many decimals (preview uses the same)


class AnnotateError(AlignError):
    """A one-line error about the report, folder or landmarks file to annotate."""


@dataclass
class Target:
    """What to annotate: images relative to ``root`` (align's input folder), the crop settings
    of the align run, and the landmarks file to write."""

    root: Path
    files: list[str]  # the images to show, relative to root (POSIX separators)
    landmarks: Path  # the --landmarks JSON to merge into
    align: AlignConfig = field(default_factory=lambda: DATASET_ALIGN)
    background: str = "white"
    inputs: list[str] = field(default_factory=list)  # every input of align (key matching)

    def background_rgb(self) -> tuple[int, int, int]:
        try:
            return ImageColor.getrgb(self.background)[:3]
        except ValueError:
            raise AnnotateError(f"unknown background colour {self.background!r}") from None


def default_landmarks_path(target: Path) -> Path:
    """``game.report.json`` -> ``game.landmarks.json``; folder ``drawings`` ->
    ``drawings.landmarks.json`` beside it."""
    name = target.name
    if target.is_dir():
        return target.with_name(name + ".landmarks.json")
    stem = name[: -len(".report.json")] if name.endswith(".report.json") else target.stem
    return target.with_name(stem + ".landmarks.json")


def _report_root(report: Path, given: str) -> Path:
    """align's input folder as the report names it: as given (relative to where align ran),
    else relative to the report's folder."""
    for candidate in (Path(given), report.parent / given):
        if candidate.is_dir():
            return candidate
    raise AnnotateError(
        f"{report}: its input folder {given} is not found from here; run annotate from the "
        "folder where align ran, or give the input folder instead of the report"
    )


def _align_config(values: object) -> AlignConfig:
    known = {f.name for f in fields(AlignConfig)}
    if not isinstance(values, dict):
        return DATASET_ALIGN
    return AlignConfig(**{k: v for k, v in values.items() if k in known})


def open_target(
    path: str | Path,
    landmarks: str | Path | None = None,
    size: int | None = None,
    background: str | None = None,
) -> Target:
    """A :class:`Target` from an align report (its ``need_landmarks``) or a folder (all of its
    images). ``landmarks`` defaults to the report's ``--landmarks`` file, else
    :func:`default_landmarks_path`; ``size`` and ``background`` override the report's (a
    folder: align's defaults, 256 and white)."""
    path = Path(path)
    if path.is_dir():
        images, _ = find_images(path)
        files = [p.relative_to(path).as_posix() for p in images]
        if not files:
            raise AnnotateError(f"no images found under {path}")
        align = DATASET_ALIGN
        bg = "white"
        root, inputs, default_lm = path, files, default_landmarks_path(path)
    elif path.is_file():
        try:
            rep = json.loads(path.read_text())
            need = rep["summary"]["need_landmarks"]
            given_root = rep["input"]
            config = rep.get("config") or {}
        except (OSError, ValueError, KeyError, TypeError):
            raise AnnotateError(
                f"{path} is not an align report (NAME.report.json with summary.need_landmarks); "
                "give the report toon-pairs align wrote, or a folder of images"
            ) from None
        if not need:
            raise AnnotateError(
                f"{path}: need_landmarks is empty; no image is waiting for landmarks"
            )
        root = _report_root(path, given_root)
        files = [str(f) for f in need]
        inputs = [f["file"] for f in rep.get("files", []) if isinstance(f, dict) and "file" in f]
        align = _align_config(config.get("align"))
        bg = config.get("background") or "white"
        default_lm = Path(config["landmarks"]) if config.get("landmarks") else None
        default_lm = default_lm or default_landmarks_path(path)
    else:
        raise AnnotateError(f"{path} not found; give an align report (.report.json) or a folder")
    if size is not None:
        align = AlignConfig(**{**align.to_dict(), "size": size})
    target = Target(
        root=root,
        files=files,
        landmarks=Path(landmarks) if landmarks else default_lm,
        align=align,
        background=background or bg,
        inputs=sorted(set(inputs) | set(files)),
    )
    target.background_rgb()  # a bad colour fails now
    read_landmarks(target)  # so does a landmarks file align would refuse
    return target


def _raw_landmarks(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AnnotateError(f"landmarks file {path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise AnnotateError(f"landmarks file {path}: expected an object {{image path: landmarks}}")
    return raw


def read_landmarks(target: Target) -> dict[str, list[np.ndarray]]:
    """What the landmarks file holds for the inputs, as align reads it."""
    if not target.landmarks.exists():
        return {}
    found, _unmatched = load_landmarks_file(target.landmarks, target.inputs)
    return found


def _same_image(key: str, rel: str, inputs: list[str]) -> bool:
    """Whether a landmarks key names image ``rel`` the way align matches keys: the relative
    path, or the bare file name when no other input has that name."""
    k = key.replace("\\", "/").removeprefix("./")
    if k == rel:
        return True
    name = rel.rsplit("/", 1)[-1]
    return "/" not in k and k == name and sum(i.rsplit("/", 1)[-1] == name for i in inputs) == 1


def parse_points(value: object) -> np.ndarray:
    """Four clicked points ``[[x, y] x 4]`` (eye_left, eye_right, mouth_left, mouth_right),
    rounded as they are saved."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise AnnotateError("points must be four [x, y] pairs") from None
    if a.shape != (4, 2) or not np.all(np.isfinite(a)):
        raise AnnotateError(f"points must be four finite [x, y] pairs, got shape {list(a.shape)}")
    return np.round(a, DECIMALS)


class Annotator:
    """The state behind the page: image loading (cached), previews and saving."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.aligner = Aligner(target.align)  # warp only: no detector model is loaded
        self._lock = threading.Lock()
        self._load = functools.lru_cache(maxsize=4)(self._load_uncached)

    def _path(self, index: int) -> Path:
        if not 0 <= index < len(self.target.files):
            raise AnnotateError(f"no image {index} (there are {len(self.target.files)})")
        return self.target.root / self.target.files[index]

    def _load_uncached(self, index: int) -> np.ndarray:
        return composite(load_image(self._path(index)), self.target.background_rgb())

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as align sees it: upright RGB, transparency on the background."""
        return self._load(index)

    def crop(self, index: int, points: np.ndarray) -> np.ndarray:
        """The aligned crop align makes from these four points (AnnotateError when align
        would refuse them)."""
        rgb = self.image(index)  # an unknown index fails here, as itself
        try:
            return self.aligner.warp(rgb, points).crop
        except AlignError as e:
            raise AnnotateError(f"{self.target.files[index]}: {e}") from None

    def state(self) -> dict[str, Any]:
        saved = read_landmarks(self.target)
        images = []
        for i, rel in enumerate(self.target.files):
            faces = saved.get(rel)
            entry: dict[str, Any] = {"index": i, "file": rel, "saved": faces is not None}
            if faces is not None and len(faces) == 1 and faces[0].shape == (4, 2):
                entry["points"] = faces[0].tolist()
            elif faces is not None:
                entry["note"] = f"{len(faces)} face(s) given in another form; saving replaces them"
            images.append(entry)
        return {
            "images": images,
            "landmarks": str(self.target.landmarks),
            "root": str(self.target.root),
            "size": self.target.align.size,
            "order": list(POINT_NAMES),
        }

    def save(self, index: int, points: np.ndarray) -> dict[str, Any]:
        """Merge image ``index``'s four points into the landmarks file (atomically); other
        entries stay, entries naming the same image are replaced. Refused (nothing written)
        when align would refuse the points."""
        self.crop(index, points)
        rel = self.target.files[index]
        pts = points.tolist()
        entry = {name: pts[i] for i, name in enumerate(POINT_NAMES)}
        with self._lock:
            raw = _raw_landmarks(self.target.landmarks)
            merged = {k: v for k, v in raw.items() if not _same_image(k, rel, self.target.inputs)}
            merged[rel] = entry
            atomic_write_text(self.target.landmarks, landmarks_json(merged))
        return {"file": rel, "landmarks": str(self.target.landmarks), "entry": entry}


def landmarks_json(entries: dict[str, Any]) -> str:
    """The landmarks file's text: one line per image, in the order given."""
    if not entries:
        return "{}\n"
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def png_bytes(rgb: np.ndarray, level: int = 1) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


@dataclass
class Answer:
    """An HTTP answer: status, content type and body."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def of_json(cls, obj: object, status: int = 200) -> Answer:
        return cls(status, "application/json", json.dumps(obj).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Answer:
        return cls.of_json({"error": message}, status)


LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}
IMAGE_ROUTE = re.compile(r"^/api/image/(\d+)$")


def handle(
    app: Annotator, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> Answer:
    """Answer one request (the whole server, without sockets; ``headers`` lower-cased)."""
    host = headers.get("host", "").rsplit(":", 1)[0].strip("[]")
    if host not in LOOPBACK_HOSTS:
        return Answer.error(403, "this page answers only at 127.0.0.1 or localhost")
    route = urlsplit(path).path
    try:
        if method == "GET":
            if route in ("/", "/index.html"):
                return _static("annotate.html")
            if route.startswith("/static/"):
                return _static(route.removeprefix("/static/"))
            if route == "/api/state":
                return Answer.of_json(app.state())
            m = IMAGE_ROUTE.match(route)
            if m:
                return Answer(200, "image/png", png_bytes(app.image(int(m.group(1)))))
            return Answer.error(404, f"no page {route}")
        if method == "POST" and route in ("/api/preview", "/api/save"):
            if headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return Answer.error(415, "send the points as application/json")
            index, points = _points_request(body)
            if route == "/api/preview":
                return Answer(200, "image/png", png_bytes(app.crop(index, points)))
            return Answer.of_json(app.save(index, points))
        return Answer.error(405, f"{method} {route} is not allowed")
    except AnnotateError as e:
        status = 404 if str(e).startswith("no image ") else 422
        return Answer.error(status, str(e))
    except (AlignError, OSError) as e:
        return Answer.error(500, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _points_request(body: bytes) -> tuple[int, np.ndarray]:
    try:
        req = json.loads(body)
        index = req["index"]
        value = req["points"]
    except (ValueError, KeyError, TypeError):
        raise AnnotateError('send {"index": I, "points": [[x, y] x 4]} as JSON') from None
    if not isinstance(index, int) or isinstance(index, bool):
        raise AnnotateError("index must be an integer")
    return index, parse_points(value)


def _static(name: str) -> Answer:
    path = STATIC_DIR / name
    kind = STATIC_TYPES.get(path.suffix)
    if "/" in name or kind is None or not path.is_file():
        return Answer.error(404, f"no file {name}")
    return Answer(200, kind, path.read_bytes())


class _Handler(BaseHTTPRequestHandler):
    app: Annotator  # set on the subclass made by make_server
    server_version = "toon-pairs-annotate"

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            ans = Answer.error(413, f"request body over {MAX_BODY} bytes")
        else:
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            ans = handle(self.app, method, self.path, headers, body)
        self.send_response(ans.status)
        self.send_header("Content-Type", ans.content_type)
        self.send_header("Content-Length", str(len(ans.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(ans.body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: the terminal shows the URL and saves only


def make_server(app: Annotator, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``app`` on 127.0.0.1:``port`` (0: a free port), not yet serving."""
    handler = type("AnnotateHandler", (_Handler,), {"app": app})
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise AnnotateError(
            f"cannot listen on 127.0.0.1:{port} ({e.strerror or e}); choose another --port"
        ) from None


__all__ = [
    "POINT_NAMES",
    "AnnotateError",
    "Annotator",
    "Answer",
    "Target",
    "default_landmarks_path",
    "handle",
    "make_server",
    "open_target",
    "parse_points",
]

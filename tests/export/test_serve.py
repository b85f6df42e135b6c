"""toon-serve end to end: real uvicorn servers on free loopback ports, a real HTTP client.

Three servers serve a random 64-px ``tiny`` model: ``plain`` (defaults, small limits so the
limits can be hit), ``guarded`` (API keys from a file and the environment, CORS for one origin,
a queue of 1) and, for one test, two uvicorn workers. Photos: the project's own
(:func:`tests.conftest.project_photo`, from the public-domain astronaut image).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, project_photo
from tests.serve_helpers import (
    HANG_GUARD_S,
    SIZE,
    Server,
    expected_paste,
    parse_response,
    png_header_only,
    raw_request,
    read_response,
    wait_until,
)

MAX_BODY_MIB = 2
MAX_PIXELS = 4_000_000
READ_TIMEOUT_S = 2
FILE_KEY = "file-key-0123456789"
ENV_KEYS = ("env-key-a", "env-key-b")
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def plain(model, tmp_path_factory):
    server = Server(
        model,
        tmp_path_factory.mktemp("plain"),
        "--max-body-mb",
        str(MAX_BODY_MIB),
        "--max-pixels",
        str(MAX_PIXELS),
        "--cpu-threads",
        "2",
        "--read-timeout",
        str(READ_TIMEOUT_S),
    )
    yield server
    assert server.stop() in (0, -15)  # uvicorn re-raises SIGTERM after a clean shutdown
    assert "Application shutdown complete" in server.log()


@pytest.fixture(scope="module")
def guarded(model, tmp_path_factory):
    work = tmp_path_factory.mktemp("guarded")
    keys = work / "keys.txt"
    keys.write_text(f"# service keys\n\n{FILE_KEY}\n")
    server = Server(
        model,
        work,
        "--api-key-file",
        str(keys),
        "--cors-origin",
        ORIGIN,
        "--max-queue",
        "1",
        env={"TOON_API_KEYS": ", ".join(ENV_KEYS)},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """Encoded test photos: small ones with one and two faces, RGBA, EXIF-rotated."""
    one = project_photo("one.jpg").read_bytes()
    mirrored = Image.open(io.BytesIO(one)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return {
        "one.jpg": one,
        "two.jpg": project_photo("two.jpg").read_bytes(),
        "mirrored.png": _encode(mirrored, "PNG"),
        "rgba.png": project_photo("rgba.png").read_bytes(),
        "exif.jpg": project_photo("exif.jpg").read_bytes(),
    }


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    from faces.align import load_image

    return load_image(Image.open(io.BytesIO(data)))


def _counter(metrics_text: str, name: str, **labels: str) -> float:
    """A counter's value from Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{want}}}" if labels else name
    for line in metrics_text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _assert_json_error(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["kind"] == kind and body["error"], body
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body


# ---------------------------------------------------------------------------------------------
# Routes


def test_info_routes(plain, model):
    assert httpx.get(plain.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(plain.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    info = httpx.get(plain.url + "/v1/model").json()
    assert info["size"] == SIZE and info["file"] == "toon.onnx" and info["io"] == "uint8"
    meta = info["metadata"]
    assert meta["toon.format_version"] == "1" and meta["toon.size"] == str(SIZE)
    assert json.loads(meta["toon.align"])["size"] == SIZE
    assert all(k.startswith("toon.") for k in meta)
    metrics = httpx.get(plain.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "toon_requests_total",
        "toon_request_duration_seconds",
        "toon_errors_total",
        "toon_faces_total",
        "toon_batch_faces",
        "toon_queue_depth",
    ):
        assert f"# TYPE {name} " in metrics.text
    labels = dict(code="200", method="GET", route="/v1/model")
    assert _counter(metrics.text, "toon_requests_total", **labels) >= 1


def test_page_and_static_files(plain):
    page = httpx.get(plain.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert 'type="file"' in html and 'id="result"' in html and 'id="download"' in html
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = httpx.get(f"{plain.url}/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        html += r.text
    # No CDN: nothing is loaded from another host.
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    _assert_json_error(httpx.get(plain.url + "/static/nope.js"), 404, "not_found")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_toonify_raw_body_each_format(plain, model, photos, fmt):
    r = httpx.post(
        f"{plain.url}/v1/toonify?format={fmt}",
        content=photos["one.jpg"],
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == f"image/{fmt}"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == fmt.upper() and img.size == (320, 240)
    report = json.loads(r.headers["x-toon-report"])
    assert len(report["faces"]) == 1 and report["mode"] == "paste" and report["size"] == SIZE
    x0, y0, x1, y1 = report["faces"][0]["box"]
    assert 80 < x0 < x1 < 260 and 30 < y0 < y1 < 220
    assert {"decode", "align", "model", "paste", "encode", "total"} <= set(report["timings_ms"])
    assert "align;dur=" in r.headers["server-timing"]
    assert r.headers["x-request-id"]
    got = np.asarray(img.convert("RGB")).astype(int)
    want = expected_paste(model, _decode(photos["one.jpg"])).astype(int)
    if fmt == "png":
        assert np.abs(got - want).max() <= 1  # lossless; ONNX Runtime may round differently
    else:
        assert np.abs(got - want).mean() < 4  # lossy, quality 90


def test_toonify_multipart_crop_json_and_max_faces(plain, photos):
    files = {"image": ("two.jpg", photos["two.jpg"], "image/jpeg")}
    r = httpx.post(f"{plain.url}/v1/toonify?mode=crop", files=files, timeout=30)
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (2 * SIZE, SIZE)  # the crops side by side
    assert len(json.loads(r.headers["x-toon-report"])["faces"]) == 2
    r = httpx.post(f"{plain.url}/v1/toonify?max_faces=1", files=files, timeout=30)
    assert r.status_code == 200 and len(json.loads(r.headers["x-toon-report"])["faces"]) == 1
    r = httpx.post(
        f"{plain.url}/v1/toonify?report=json&format=jpeg&quality=80",
        content=photos["two.jpg"],
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["media_type"] == "image/jpeg" and (doc["width"], doc["height"]) == (640, 300)
    image = Image.open(io.BytesIO(base64.b64decode(doc["image"])))
    assert image.format == "JPEG" and image.size == (640, 300)
    assert len(doc["faces"]) == 2
    for face in doc["faces"]:
        crop = Image.open(io.BytesIO(base64.b64decode(face["crop"])))
        assert crop.size == (SIZE, SIZE) and len(face["quad"]) == 4 and len(face["box"]) == 4
    # Largest face first.
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in doc["faces"]]
    assert areas == sorted(areas, reverse=True)


def test_toonify_keeps_alpha_and_applies_exif(plain, photos):
    r = httpx.post(f"{plain.url}/v1/toonify", content=photos["rgba.png"], timeout=30)
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(r.content))
    alpha_in = np.asarray(Image.open(io.BytesIO(photos["rgba.png"])).convert("RGBA"))[:, :, 3]
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out)[:, :, 3], alpha_in)
    r = httpx.post(f"{plain.url}/v1/toonify?format=jpeg", content=photos["exif.jpg"], timeout=30)
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (240, 320)  # upright, as EXIF says


# ---------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_answered_and_the_server_stays_up(plain, photos):
    url = plain.url + "/v1/toonify"
    one = photos["one.jpg"]
    blank = _encode(Image.new("RGB", (200, 160), (120, 130, 140)), "PNG")
    ico = _encode(Image.new("RGB", (32, 32), (10, 200, 30)), "ICO")
    cases = [
        ("empty body", dict(content=b""), 400, "empty_body"),
        ("not an image", dict(content=b"hello, this is text"), 400, "not_an_image"),
        ("truncated", dict(content=one[: len(one) // 2]), 400, "corrupt_image"),
        ("pixel bomb", dict(content=png_header_only(20000, 20000)), 413, "too_many_pixels"),
        ("unsupported format", dict(content=ico), 415, "unsupported_format"),
        ("no face", dict(content=blank), 422, "no_face"),
        (
            "multipart without image",
            dict(files={"photo": ("a.jpg", one, "image/jpeg")}),
            400,
            "bad_request",
        ),
        (
            "multipart text field",
            dict(data={"image": "not a file"}, files={"x": b"1"}),
            400,
            "bad_request",
        ),
    ]
    for name, kw, status, kind in cases:
        r = httpx.post(url, timeout=30, **kw)
        assert r.status_code == status, name
        _assert_json_error(r, status, kind)
    for query in (
        "mode=sketch",
        "format=gif",
        "max_faces=0",
        "max_faces=99",
        "max_faces=two",
        "quality=101",
        "report=xml",
        "colour=red",
    ):
        body = _assert_json_error(httpx.post(f"{url}?{query}", content=one), 400, "bad_request")
        assert query.split("=")[0] in body["error"]
    r = httpx.get(url)
    _assert_json_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    _assert_json_error(httpx.delete(plain.url + "/healthz"), 405, "method_not_allowed")
    _assert_json_error(httpx.get(plain.url + "/v2/toonify"), 404, "not_found")
    _assert_json_error(httpx.post(plain.url + "/toonify", content=one), 404, "not_found")
    # The server is still up and still right.
    assert httpx.get(plain.url + "/healthz").status_code == 200
    assert httpx.post(url, content=one, timeout=30).status_code == 200
    metrics = httpx.get(plain.url + "/metrics").text
    for kind in ("empty_body", "not_an_image", "corrupt_image", "too_many_pixels", "no_face"):
        assert _counter(metrics, "toon_errors_total", kind=kind) >= 1, kind


def test_body_limits(plain):
    limit = MAX_BODY_MIB * 2**20
    head = (
        "POST /v1/toonify HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
        "Connection: close\r\n"
    )
    # Declared too large: refused from the header alone, before any body is read.
    raw = raw_request(plain.port, (head + f"Content-Length: {limit + 1}\r\n\r\n").encode())
    status, headers, body = parse_response(raw)
    assert status == 413 and json.loads(body)["kind"] == "body_too_large"
    # Streamed without a length: refused once the limit is passed.
    chunk = limit + 1
    with socket.create_connection(("127.0.0.1", plain.port), timeout=20) as s:
        s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n" + f"{chunk:x}\r\n").encode())
        s.sendall(b"\0" * chunk + b"\r\n")
        status, headers, body = parse_response(read_response(s))
    assert status == 413 and json.loads(body)["kind"] == "body_too_large"
    # A client that stalls mid-body is cut off after the read timeout.
    with socket.create_connection(("127.0.0.1", plain.port), timeout=20) as s:
        stall = "X-Request-ID: stalled-body-408\r\nContent-Length: 5000\r\n\r\n"
        s.sendall((head + stall).encode() + b"\xff\xd8\xff")
        s.settimeout(HANG_GUARD_S)
        status, headers, body = parse_response(read_response(s))
    assert status == 408 and json.loads(body)["kind"] == "timeout"
    assert f"within {READ_TIMEOUT_S} s" in json.loads(body)["error"]
    assert httpx.get(plain.url + "/healthz").status_code == 200
    # The access log reports the bytes received (3), not the 5000 announced.
    mine = wait_until(
        lambda: [e for e in plain.access_log() if e["request_id"] == "stalled-body-408"],
        "no access-log line for the stalled request",
    )
    assert mine[0]["status"] == 408 and mine[0]["bytes_in"] == 3, mine[0]
    assert mine[0]["content_length"] == "5000"


# ---------------------------------------------------------------------------------------------
# API keys, CORS, the bounded queue


def test_api_keys(guarded, photos):
    url = guarded.url
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {FILE_KEY}"}):
        r = httpx.get(url + "/v1/model", headers=headers)
        _assert_json_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(url + "/v1/toonify", content=photos["one.jpg"])
    _assert_json_error(r, 401, "unauthorized")
    for key in (FILE_KEY, *ENV_KEYS):
        r = httpx.get(url + "/v1/model", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, key
    r = httpx.post(
        url + "/v1/toonify",
        content=photos["one.jpg"],
        headers={"Authorization": f"bearer {ENV_KEYS[1]}"},
        timeout=30,
    )
    assert r.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js"):
        assert httpx.get(url + path).status_code == 200, path  # not API routes


def test_cors(plain, guarded):
    auth = {"Authorization": f"Bearer {FILE_KEY}"}
    r = httpx.get(plain.url + "/v1/model", headers={"Origin": ORIGIN})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # off
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    r = httpx.options(guarded.url + "/v1/toonify", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    r = httpx.options(guarded.url + "/v1/toonify", headers={**preflight, "Origin": "https://x.y"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.get(guarded.url + "/v1/model", headers={"Origin": ORIGIN, **auth})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-toon-report" in r.headers["access-control-expose-headers"].lower()


def test_a_stalled_upload_holds_no_queue_slot(guarded, photos):
    """Issue 16, defect 3: with a queue of 1, a client that sends headers and then stalls used
    to hold the only slot (every other request got 503 for up to the read timeout). Only
    complete bodies enter the queue now; the stalled one waits among the uploads. (The 503 of
    a full queue: tests/export/test_serve_hardening.py.)"""
    auth = {"Authorization": f"Bearer {FILE_KEY}"}
    holder = socket.create_connection(("127.0.0.1", guarded.port), timeout=10)
    try:
        holder.sendall(
            (
                "POST /v1/toonify HTTP/1.1\r\nHost: test\r\n"
                f"Authorization: Bearer {FILE_KEY}\r\nContent-Length: 100000\r\n\r\n"
            ).encode()
            + b"\xff\xd8"
        )
        ready = wait_until(
            lambda: (r := httpx.get(guarded.url + "/readyz").json())["receiving"] >= 1 and r,
            "the stalled upload was never seen",
        )
        assert ready["queue"] == 0
        r = httpx.post(
            guarded.url + "/v1/toonify", content=photos["one.jpg"], headers=auth, timeout=30
        )
        assert r.status_code == 200, r.text[:300]
    finally:
        holder.close()
    metrics = httpx.get(guarded.url + "/metrics").text
    assert _counter(metrics, "toon_errors_total", kind="overloaded") == 0


# ---------------------------------------------------------------------------------------------
# Load, logs, workers, no torch


def test_load_300_requests_at_concurrency_16(plain, model, photos):
    """Every request answered, correctly (its own photo's result), none lost."""
    names = ["one.jpg", "mirrored.png", "two.jpg"]
    want = {n: expected_paste(model, _decode(photos[n])) for n in names}
    before = httpx.get(plain.url + "/metrics").text
    n_requests, concurrency = 300, 16

    async def run() -> list[tuple[str, int, bytes]]:
        sem = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=plain.url, limits=limits, timeout=60) as client:

            async def one(i: int) -> tuple[str, int, bytes]:
                name = names[i % len(names)]
                async with sem:
                    r = await client.post("/v1/toonify", content=photos[name])
                return name, r.status_code, r.content

            return await asyncio.gather(*(one(i) for i in range(n_requests)))

    t0 = time.perf_counter()
    results = asyncio.run(run())
    elapsed = time.perf_counter() - t0
    assert len(results) == n_requests
    statuses = [status for _, status, _ in results]
    assert statuses.count(200) == n_requests, {s: statuses.count(s) for s in set(statuses)}
    for name, _, content in results:
        got = np.asarray(Image.open(io.BytesIO(content))).astype(int)
        assert got.shape == want[name].shape
        assert np.abs(got - want[name].astype(int)).max() <= 1, name
    after = httpx.get(plain.url + "/metrics").text
    labels = dict(code="200", method="POST", route="/v1/toonify")
    served = _counter(after, "toon_requests_total", **labels)
    assert served - _counter(before, "toon_requests_total", **labels) == n_requests
    faces = _counter(after, "toon_faces_total") - _counter(before, "toon_faces_total")
    assert faces == 4 * (n_requests // 3)  # 1 + 1 + 2 faces per round of three photos
    batched = _counter(after, "toon_batch_faces_sum") - _counter(before, "toon_batch_faces_sum")
    calls = _counter(after, "toon_batch_faces_count") - _counter(before, "toon_batch_faces_count")
    # Every face went through a counted model call. How many calls load shares depends on
    # timing; that calls are shared is shown by event in tests/export/test_serve_batching.py.
    assert batched == faces and 0 < calls <= faces
    print(f"\n300 requests at concurrency 16: {elapsed:.1f} s, {faces / calls:.2f} faces per call")


def test_json_access_log(plain):
    httpx.get(plain.url + "/healthz", headers={"X-Request-ID": "trace-me-123"})
    mine = wait_until(
        lambda: [e for e in plain.access_log() if e.get("request_id") == "trace-me-123"],
        "no access-log line for the request",
    )
    entries = plain.access_log()
    assert mine[0]["path"] == "/healthz" and mine[0]["status"] == 200
    assert {"ts", "level", "method", "duration_ms", "client", "bytes_out"} <= set(mine[0])
    errors = [e for e in entries if e.get("error")]
    assert errors and all(e["status"] >= 400 for e in errors)
    # The server's own log is JSON too, and never shows a request's traceback.
    for line in plain.log().splitlines():
        assert isinstance(json.loads(line), dict)


def test_two_workers(model, photos, tmp_path):
    server = Server(model, tmp_path / "workers", "--workers", "2")
    try:
        for _ in range(4):
            r = httpx.post(server.url + "/v1/toonify", content=photos["one.jpg"], timeout=30)
            assert r.status_code == 200
        wait_until(
            lambda: server.log().count('"event": "ready"') >= 2, "the second worker never came up"
        )
        assert server.log().count('"event": "ready"') == 2  # one model per worker process
    finally:
        assert server.stop() in (0, -15)


def test_service_never_imports_torch(plain, model):
    maps = Path(f"/proc/{plain.proc.pid}/maps")
    if maps.exists():
        assert "libtorch" not in maps.read_text()  # the running server
    code = (
        "import asyncio, sys\n"
        "from export.serve import create_app\n"
        "from export.serve_config import ServeConfig\n"
        "import export.serve_cli\n"
        f"app = create_app(ServeConfig(model={str(model)!r}))\n"
        "service = app.state.service\n"
        "asyncio.run(service.start()); asyncio.run(service.stop())\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_cli_errors(model, tmp_path, capsys):
    from export.serve_cli import main

    assert main(["--model", str(tmp_path / "none.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("toon-serve: error:") and "model not found" in err
    assert main(["--model", str(model), "--max-batch", "0"]) == 2
    assert "max_batch" in capsys.readouterr().err
    assert main(["--model", str(model), "--api-key-file", str(tmp_path / "keys.txt")]) == 1
    assert "API key file" in capsys.readouterr().err
    assert main(["--model", str(model), "--workers", "3", "--dry-run"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["workers"] == 3 and config["max_batch"] == 8 and config["model"] == str(model)

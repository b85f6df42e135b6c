"""toon-serve's parts without a server: the micro-batcher, the metrics, options, keys and
decoding."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.serve_api import ApiError, ToonifyOptions
from export.serve_batch import MicroBatcher
from export.serve_codecs import decode_image, encode_image
from export.serve_config import ApiKeys, ServeConfig, load_api_keys
from export.serve_metrics import Metrics
from tests.conftest import shared_file


class SlowModel:
    """Adds 1 to every crop and records the batch sizes; each call takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.02, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model broke")
        self.calls.append(len(crops))
        return crops + 1


def _crops(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 4, 4, 3), value, np.uint8)


def _run_concurrently(batcher: MicroBatcher, jobs: list[np.ndarray]):
    async def main():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(j) for j in jobs))
        finally:
            batcher.stop()

    return asyncio.run(main())


def test_concurrent_requests_share_model_calls_and_get_their_own_results():
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch=8, timeout_s=0.05, expecting=lambda: True)
    jobs = [_crops(10 * i, n=1 + i % 2) for i in range(10)]  # 15 faces
    results = _run_concurrently(batcher, jobs)
    for job, (out, info) in zip(jobs, results, strict=True):
        assert np.array_equal(out, job + 1)  # each request gets its own faces back
        assert 1 <= info.faces <= 8 and info.requests >= 1 and info.model_s > 0
    assert sum(model.calls) == 15 and max(model.calls) <= 8
    assert len(model.calls) <= 3  # batched, not one call per request
    assert model.threads == {"toon-batcher"}  # off the event loop, on one thread


def test_a_lone_request_does_not_wait_and_waits_are_bounded():
    model = SlowModel(delay=0.0)
    lone = MicroBatcher(model, max_batch=8, timeout_s=5.0, expecting=lambda: False)
    t0 = time.perf_counter()
    _run_concurrently(lone, [_crops(1)])
    assert time.perf_counter() - t0 < 1.0  # nobody else is coming: no 5 s wait
    waiting = MicroBatcher(model, max_batch=8, timeout_s=0.2, expecting=lambda: True)
    t0 = time.perf_counter()
    ((_, info),) = _run_concurrently(waiting, [_crops(1)])
    elapsed = time.perf_counter() - t0
    assert 0.15 < elapsed < 2.0 and info.faces == 1  # waited for company, then gave up


def test_model_errors_reach_every_waiting_request():
    batcher = MicroBatcher(SlowModel(fail=True), max_batch=4, timeout_s=0.05)

    async def main():
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(_crops(i)) for i in range(3)), return_exceptions=True
            )
        finally:
            batcher.stop()

    errors = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "model broke" in str(e) for e in errors)


def test_submit_needs_a_running_batcher():
    batcher = MicroBatcher(SlowModel())
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(batcher.submit(_crops(0)))


def test_metrics_render_prometheus_text():
    m = Metrics()
    m.counter("t_requests_total", "Requests.")
    m.histogram("t_seconds", "Latency.", (0.1, 1.0))
    m.gauge("t_depth", "Depth.", lambda: 3)
    m.inc("t_requests_total", route="/a", code="200")
    m.inc("t_requests_total", 2, route="/a", code="200")
    m.inc("t_requests_total", route='/"x"\n', code="500")
    for v in (0.05, 0.5, 5.0):
        m.observe("t_seconds", v, route="/a")
    text = m.render()
    assert "# TYPE t_requests_total counter" in text
    assert 't_requests_total{code="200",route="/a"} 3' in text
    assert 't_requests_total{code="500",route="/\\"x\\"\\n"} 1' in text  # escaped
    assert 't_seconds_bucket{route="/a",le="0.1"} 1' in text
    assert 't_seconds_bucket{route="/a",le="1"} 2' in text  # cumulative
    assert 't_seconds_bucket{route="/a",le="+Inf"} 3' in text
    assert 't_seconds_count{route="/a"} 3' in text and 't_seconds_sum{route="/a"} 5.55' in text
    assert "t_depth 3" in text and text.endswith("\n")
    assert m.value("t_requests_total", route="/a", code="200") == 3


def test_options_parse_and_reject():
    config = ServeConfig(model="m.onnx", max_faces=4)
    opts = ToonifyOptions.parse({"format": "JPG", "mode": "crop", "max_faces": "2"}, config)
    assert (opts.format, opts.mode, opts.max_faces, opts.quality) == ("jpeg", "crop", 2, 90)
    assert ToonifyOptions.parse({}, config).max_faces == 4
    for bad in ({"max_faces": "5"}, {"format": "bmp"}, {"quality": "0"}, {"size": "1"}):
        with pytest.raises(ApiError) as e:
            ToonifyOptions.parse(bad, config)
        assert e.value.status == 400 and e.value.kind == "bad_request"


def test_config_checks_and_round_trips_through_json():
    config = ServeConfig(model="m.onnx", cors_origins=("https://a.example",), threads=2)
    assert ServeConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="max_queue"):
        ServeConfig(model="m.onnx", max_queue=0)


def test_api_keys_from_env_and_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\nk-file-1\n  k-file-2  \n")
    got = load_api_keys(keys, {"TOON_API_KEYS": "k-env-1, k-env-2,\nk-env-3"})
    assert got == ["k-env-1", "k-env-2", "k-env-3", "k-file-1", "k-file-2"]
    assert load_api_keys(None, {}) == []
    checker = ApiKeys(got)
    assert checker.required and len(checker) == 5
    assert checker.ok("k-file-2") and not checker.ok("k-file") and not checker.ok("")
    assert not ApiKeys([]).required


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_decode_accepts_modes_and_refuses_the_rest():
    rgb, fmt = decode_image(_png(Image.new("L", (30, 20), 128)), max_pixels=10_000)
    assert fmt == "PNG" and rgb.shape == (20, 30, 3)
    rgba, _ = decode_image(_png(Image.new("RGBA", (8, 8), (1, 2, 3, 4))), max_pixels=100)
    assert rgba.shape == (8, 8, 4)
    cases = [
        (b"", 400, "empty_body"),
        (_png(Image.new("RGB", (50, 50), (9, 99, 199)))[:60], 400, "corrupt_image"),
        (b"GIF89a but not really", 400, "not_an_image"),
        (b"plain text", 400, "not_an_image"),
        (_png(Image.new("RGB", (101, 100))), 413, "too_many_pixels"),
        (_png(Image.new("RGB", (16, 16)), "PPM"), 415, "unsupported_format"),
    ]
    for data, status, kind in cases:
        with pytest.raises(ApiError) as e:
            decode_image(data, max_pixels=10_000)
        assert (e.value.status, e.value.kind) == (status, kind), data[:20]


def test_encode_formats():
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 3] = 200
    assert Image.open(io.BytesIO(encode_image(rgba, "png", 90))).mode == "RGBA"
    assert Image.open(io.BytesIO(encode_image(rgba, "jpeg", 90))).mode == "RGB"
    assert Image.open(io.BytesIO(encode_image(rgba, "webp", 90))).format == "WEBP"


class BrokenModel:
    """Stands in for a Toonifier whose model fails on real faces (warm-up zeros pass)."""

    size = 64
    io = "uint8"
    device = "cpu"
    metadata = {"toon.size": "64"}
    path = Path("broken.onnx")

    def align_options(self) -> dict:
        return {"size": self.size}

    def run(self, crops: np.ndarray) -> np.ndarray:
        if crops.any():
            raise RuntimeError("boom in /very/secret/path.py")
        return crops


def test_an_internal_error_is_a_json_500_without_a_traceback():
    import httpx

    from export.serve import create_app

    photo = shared_file("faces", "obama_small.jpg").read_bytes()
    app = create_app(ServeConfig(model="broken.onnx", access_log=False), toonifier=BrokenModel())
    service = app.state.service

    async def main():
        await service.start()  # what the lifespan does under uvicorn
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post("/v1/toonify", content=photo)
                health = await client.get("/healthz")
                metrics = (await client.get("/metrics")).text
        finally:
            await service.stop()
        return r, health, metrics

    r, health, metrics = asyncio.run(main())
    assert r.status_code == 500
    assert r.json() == {"error": "internal error; the server log has details", "kind": "internal"}
    assert health.status_code == 200  # still serving
    assert 'toon_errors_total{kind="internal"} 1' in metrics

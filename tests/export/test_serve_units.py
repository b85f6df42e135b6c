"""toon-serve's parts without a server: the micro-batcher, the metrics, options, keys and
decoding."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.serve_api import ApiError, ToonifyOptions
from export.serve_batch import MicroBatcher
from export.serve_codecs import decode_image, encode_image
from export.serve_config import ApiKeys, ServeConfig, load_api_keys
from export.serve_metrics import Metrics
from tests.conftest import project_photo

HANG_GUARD_S = 60  # only a broken batcher gets here: no passing run waits on it


class GatedModel:
    """Adds 1 to every crop and records each call's batch size. A call blocks until the test
    opens ``gate`` (open from the start when ``gated`` is off), so the test decides what is
    queued while the model is busy: batching is shown by events, never by timing."""

    def __init__(self, gated: bool = False, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.entered = threading.Semaphore(0)  # released once per call begun
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.calls.append(len(crops))
        self.entered.release()
        assert self.gate.wait(HANG_GUARD_S), "the test never opened the gate"
        if self.fail:
            raise RuntimeError("model broke")
        return crops + 1


def _crops(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 4, 4, 3), value, np.uint8)


def _run_concurrently(batcher: MicroBatcher, jobs: list[np.ndarray]):
    async def main():
        batcher.start()
        try:
            gathered = asyncio.gather(*(batcher.submit(j) for j in jobs))
            return await asyncio.wait_for(gathered, HANG_GUARD_S)
        finally:
            batcher.stop()

    return asyncio.run(main())


async def _queued(batcher: MicroBatcher, n: int) -> None:
    """Yield to the event loop until ``n`` jobs wait in the batcher's queue."""
    for _ in range(10_000):
        if batcher._queue.qsize() >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{batcher._queue.qsize()} jobs queued, expected {n}")


def _greedy_batches(sizes: list[int], max_batch: int) -> list[int]:
    """Faces per call when the queue holds jobs of ``sizes`` (in order) and each batch takes
    jobs in order while they fit (the rule the batcher documents)."""
    calls, n = [], 0
    for k in sizes:
        if n and n + k > max_batch:
            calls.append(n)
            n = 0
        n += k
    return [*calls, n] if n else calls


def test_jobs_queued_while_the_model_runs_share_the_next_calls():
    """The first job runs alone; the nine submitted while it runs (14 faces) go in the fewest
    calls of at most 8 faces, and every request gets its own faces back."""
    model = GatedModel(gated=True)
    batcher = MicroBatcher(model, max_batch=8, timeout_s=HANG_GUARD_S, expecting=lambda: False)
    first = _crops(0)
    later = [_crops(10 * i, n=1 + i % 2) for i in range(1, 10)]  # sizes 2, 1, 2, 1, ...

    async def main():
        batcher.start()
        try:
            head = asyncio.ensure_future(batcher.submit(first))
            assert await asyncio.to_thread(model.entered.acquire, timeout=HANG_GUARD_S)
            rest = [asyncio.ensure_future(batcher.submit(j)) for j in later]
            await _queued(batcher, len(later))
            model.gate.set()
            return await asyncio.wait_for(asyncio.gather(head, *rest), HANG_GUARD_S)
        finally:
            batcher.stop()

    results = asyncio.run(main())
    sizes = [len(j) for j in later]
    assert sum(sizes) == 14
    assert model.calls == [1, *_greedy_batches(sizes, 8)] == [1, 8, 6]
    requests_per_call = {1: 1, 8: 5, 6: 4}  # jobs 1-5 (2+1+2+1+2) and 6-9 (1+2+1+2)
    for job, (out, info) in zip([first, *later], results, strict=True):
        assert np.array_equal(out, job + 1)  # each request gets its own faces back
        assert info.requests == requests_per_call[info.faces] and info.model_s >= 0
    assert model.threads == {"toon-batcher"}  # off the event loop, on one thread


def test_a_job_waits_for_company_only_while_more_are_expected():
    """With ``expecting()`` true the batcher holds a lone job until a second one arrives (one
    call with both); the wait is decided by the event, the timeout is only a hang guard."""
    model = GatedModel()
    asked = threading.Event()

    def expecting() -> bool:
        asked.set()
        return True

    batcher = MicroBatcher(model, max_batch=2, timeout_s=HANG_GUARD_S, expecting=expecting)

    async def main():
        batcher.start()
        try:
            a = asyncio.ensure_future(batcher.submit(_crops(1)))
            assert await asyncio.to_thread(asked.wait, HANG_GUARD_S), "expecting() never asked"
            assert model.calls == []  # holding the first job, not running it
            b = asyncio.ensure_future(batcher.submit(_crops(2)))
            return await asyncio.wait_for(asyncio.gather(a, b), HANG_GUARD_S)
        finally:
            batcher.stop()

    (out_a, info_a), (out_b, info_b) = asyncio.run(main())
    assert model.calls == [2] and info_a.requests == info_b.requests == 2
    assert out_a[0, 0, 0, 0] == 2 and out_b[0, 0, 0, 0] == 3


def test_a_lone_request_does_not_wait_and_waits_are_bounded():
    # Nobody else is coming: a job with an hour's timeout runs at once (a wait would hit the
    # hang guard instead).
    model = GatedModel()
    lone = MicroBatcher(model, max_batch=8, timeout_s=3600.0, expecting=lambda: False)
    ((out, info),) = _run_concurrently(lone, [_crops(1)])
    assert model.calls == [1] and info.faces == 1 and out[0, 0, 0, 0] == 2
    # Company is always expected but never comes: the wait ends at the timeout, alone.
    asked: list[bool] = []
    model = GatedModel()
    waiting = MicroBatcher(
        model, max_batch=8, timeout_s=0.01, expecting=lambda: asked.append(True) or True
    )
    ((_, info),) = _run_concurrently(waiting, [_crops(1)])
    assert asked and model.calls == [1] and info.faces == 1 and info.requests == 1


def test_a_job_larger_than_max_batch_runs_alone():
    model = GatedModel(gated=True)
    batcher = MicroBatcher(model, max_batch=4, timeout_s=HANG_GUARD_S)

    async def main():
        batcher.start()
        try:
            head = asyncio.ensure_future(batcher.submit(_crops(0)))
            assert await asyncio.to_thread(model.entered.acquire, timeout=HANG_GUARD_S)
            jobs = [_crops(1, 2), _crops(2, 6), _crops(3, 1)]
            rest = [asyncio.ensure_future(batcher.submit(j)) for j in jobs]
            await _queued(batcher, len(jobs))
            model.gate.set()
            return await asyncio.wait_for(asyncio.gather(head, *rest), HANG_GUARD_S)
        finally:
            batcher.stop()

    results = asyncio.run(main())
    assert model.calls == [1, 2, 6, 1]  # the 6-face job neither waits for nor joins others
    assert [len(out) for out, _ in results] == [1, 2, 6, 1]


def test_model_errors_reach_every_waiting_request():
    model = GatedModel(gated=True, fail=True)
    batcher = MicroBatcher(model, max_batch=4, timeout_s=HANG_GUARD_S)

    async def main():
        batcher.start()
        try:
            head = asyncio.ensure_future(batcher.submit(_crops(0)))
            assert await asyncio.to_thread(model.entered.acquire, timeout=HANG_GUARD_S)
            rest = [asyncio.ensure_future(batcher.submit(_crops(i))) for i in (1, 2, 3)]
            await _queued(batcher, 3)
            model.gate.set()
            both = asyncio.gather(head, *rest, return_exceptions=True)
            return await asyncio.wait_for(both, HANG_GUARD_S)
        finally:
            batcher.stop()

    errors = asyncio.run(main())
    assert model.calls == [1, 3]  # the failing call, then the three that waited, together
    assert all(isinstance(e, RuntimeError) and "model broke" in str(e) for e in errors)


def test_submit_needs_a_running_batcher():
    batcher = MicroBatcher(GatedModel())
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

    photo = project_photo("one.jpg").read_bytes()
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

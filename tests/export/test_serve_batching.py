"""Micro-batching through the whole service: HTTP requests into :class:`ToonService` (in
process, over ASGI), real decoding and face alignment, the real ``expecting`` wiring
(``upstream > 0``) and its counters, and a stand-in model that counts its calls and holds each
one until the test lets it go. Every claim is shown by events and call counts, never timing.

Photos: ``skimage.data.astronaut()`` (NASA, public domain) at 256 px, one face; mirrored and
side by side, two faces.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from export.serve_config import ServeConfig
from faces.align import align, paste_back
from tests.serve_helpers import HANG_GUARD_S

SIZE = 64


class CountingModel:
    """A Toonifier stand-in: ``255 - crop``. Records the faces of every call on real faces
    (warm-up zeros pass uncounted); when gated, each such call waits for ``gate``."""

    size = SIZE
    io = "uint8"
    device = "cpu"
    metadata = {"toon.size": str(SIZE)}
    path = Path("counting.onnx")

    def __init__(self, gated: bool = False) -> None:
        self.calls: list[int] = []
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def align_options(self) -> dict:
        return {"size": self.size}

    def run(self, crops: np.ndarray) -> np.ndarray:
        if crops.any():
            self.calls.append(len(crops))
            self.entered.release()
            assert self.gate.wait(HANG_GUARD_S), "the test never opened the gate"
        return 255 - crops


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    from skimage.data import astronaut

    one = np.asarray(Image.fromarray(astronaut()).resize((256, 256), Image.Resampling.LANCZOS))
    return {
        "one": one,
        "mirror": np.ascontiguousarray(one[:, ::-1]),
        "two": np.concatenate([one, one[:, ::-1]], axis=1),
    }


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def _expected(rgb: np.ndarray) -> np.ndarray:
    """What the service must answer for ``rgb`` with this model: align (faces.align), invert
    each crop, paste back through the person mask (the service's default)."""
    faces = align(rgb, size=SIZE)
    return paste_back(rgb, faces, [255 - f.crop[:, :, :3] for f in faces])


def _serve(config: ServeConfig, model: CountingModel, scenario):
    from export.serve import create_app

    app = create_app(config, toonifier=model)
    service = app.state.service

    async def main():
        await service.start()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://t", timeout=HANG_GUARD_S
            ) as client:
                return await asyncio.wait_for(scenario(client, service), HANG_GUARD_S)
        finally:
            await service.stop()

    return asyncio.run(main())


async def _until(predicate, what: str) -> None:
    """Yield to the loop (and the pool threads) until ``predicate()`` holds."""
    async with asyncio.timeout(HANG_GUARD_S):
        while not predicate():
            await asyncio.sleep(0.005)
    assert predicate(), what


def _config(**kw) -> ServeConfig:
    return ServeConfig(model="counting.onnx", access_log=False, **kw)


def test_requests_that_arrive_while_the_model_runs_share_one_call(photos):
    """One request holds the model; six more (nine faces) arrive meanwhile and all reach the
    batcher; when the model is free they go in ONE call (9 faces, 6 requests), and every
    request gets its own photo's answer."""
    model = CountingModel(gated=True)
    names = ["one", "two", "mirror", "two", "one", "two"]

    async def scenario(client, service):
        first = asyncio.ensure_future(client.post("/v1/toonify", content=_png(photos["one"])))
        assert await asyncio.to_thread(model.entered.acquire, timeout=HANG_GUARD_S)
        rest = [
            asyncio.ensure_future(client.post("/v1/toonify", content=_png(photos[n])))
            for n in names
        ]
        # upstream 0 with 7 in flight: every request has handed its faces to the batcher.
        await _until(lambda: service.inflight == 7 and service.upstream == 0, "not all queued")
        model.gate.set()
        answers = await asyncio.gather(first, *rest)
        return answers, (await client.get("/metrics")).text, service.upstream, service.inflight

    config = _config(max_batch=16, batch_timeout_ms=0, cpu_threads=2)
    answers, metrics, upstream, inflight = _serve(config, model, scenario)
    assert model.calls == [1, 9]
    assert upstream == 0 and inflight == 0
    for name, r in zip(["one", *names], answers, strict=True):
        assert r.status_code == 200, r.text[:300]
        report = json.loads(r.headers["x-toon-report"])
        want = {"faces": 1, "requests": 1} if r is answers[0] else {"faces": 9, "requests": 6}
        assert report["batch"] == want
        got = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(int)
        assert np.abs(got - _expected(photos[name])).max() == 0, name  # its own faces, lossless
    assert "toon_batch_faces_sum 10" in metrics and "toon_batch_faces_count 2" in metrics
    assert "toon_batch_requests_sum 7" in metrics


def test_the_batcher_waits_for_a_request_still_being_aligned(photos):
    """``expecting`` is ``upstream > 0``: while request B is admitted but held in alignment,
    request A waits at the batcher (the model is free and not called); once B is aligned both
    go in one call. The batch timeout is an hour: only the event ends the wait."""
    model = CountingModel()
    held = threading.Event()
    release = threading.Event()
    seen: list[bool] = []
    asked = threading.Event()

    async def scenario(client, service):
        align = service._align

        def slow_align(rgb, max_faces):
            if rgb.shape[1] == 512:  # request B ("two"): hold it in the pool thread
                held.set()
                assert release.wait(HANG_GUARD_S)
            return align(rgb, max_faces)

        service._align = slow_align
        wiring = service.batcher.expecting

        def spy() -> bool:
            seen.append(wiring())
            asked.set()
            return seen[-1]

        service.batcher.expecting = spy
        b = asyncio.ensure_future(client.post("/v1/toonify", content=_png(photos["two"])))
        assert await asyncio.to_thread(held.wait, HANG_GUARD_S)
        assert service.upstream == 1
        a = asyncio.ensure_future(client.post("/v1/toonify", content=_png(photos["one"])))
        assert await asyncio.to_thread(asked.wait, HANG_GUARD_S), "the batcher never asked"
        calls_while_waiting = list(model.calls)
        release.set()
        return await a, await b, calls_while_waiting

    config = _config(max_batch=3, batch_timeout_ms=3_600_000, cpu_threads=2)
    a, b, calls_while_waiting = _serve(config, model, scenario)
    assert seen[0] is True  # B was upstream when A reached the batcher
    assert calls_while_waiting == []  # A was held, not run alone
    assert model.calls == [3]  # A's face and B's two, together
    for r in (a, b):
        assert r.status_code == 200
        assert json.loads(r.headers["x-toon-report"])["batch"] == {"faces": 3, "requests": 2}


def test_failed_requests_leave_the_counters_at_zero(photos):
    """Requests that fail before the model (no face, corrupt, not an image, bad multipart)
    give back their place upstream: afterwards a lone request with an hour's batch timeout
    runs at once (a leaked count would make it wait for company that never comes)."""
    model = CountingModel()
    blank = _png(np.full((120, 160, 3), 128, np.uint8))
    good = _png(photos["one"])
    bad = [blank, good[: len(good) // 2], b"not an image", b""]

    async def scenario(client, service):
        answers = await asyncio.gather(*(client.post("/v1/toonify", content=d) for d in bad))
        multipart = await client.post("/v1/toonify", files={"photo": ("a.png", good)})
        counters = (service.upstream, service.inflight)
        assert counters == (0, 0)  # before the lone request, which a leak would hold
        lone = await client.post("/v1/toonify", content=good)
        return [r.status_code for r in (*answers, multipart)], counters, lone

    config = _config(max_batch=8, batch_timeout_ms=3_600_000, cpu_threads=2)
    statuses, counters, lone = _serve(config, model, scenario)
    assert statuses == [422, 400, 400, 400, 400]
    assert counters == (0, 0)
    assert lone.status_code == 200 and model.calls == [1]

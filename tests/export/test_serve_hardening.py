"""toon-serve against hostile or careless clients (issue 16): slow uploads, idle and trickling
connections, a tight open-file limit, metric labels from arbitrary methods and paths, the Host
header, empty API-key sources and the memory of concurrent decodes.

Network defects are tested over real sockets against real uvicorn servers (``hard``: a short
request-head timeout and small limits; ``capped``: a connection cap and no timeout a test could
reach); the rest in process. Tests wait for events (a socket closed, a counter reached) and
never assert how long something took: a timeout only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from export.serve_codecs import DecodeBudget
from export.serve_config import ServeConfig, ServeError, load_api_keys
from export.serve_metrics import LoopErrorLog
from tests.conftest import project_photo
from tests.serve_helpers import (
    HANG_GUARD_S,
    Server,
    parse_response,
    raw_request,
    read_response,
    wait_until,
)

HEADER_TIMEOUT_S = 2
MAX_RECEIVING = 44
MAX_CONNECTIONS = 60


@pytest.fixture(scope="module")
def hard(model, tmp_path_factory):
    server = Server(
        model,
        tmp_path_factory.mktemp("hard"),
        "--header-timeout",
        str(HEADER_TIMEOUT_S),
        "--read-timeout",
        "600",  # stalled uploads stay stalled for as long as a test needs
        "--max-receiving",
        str(MAX_RECEIVING),
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--cpu-threads",
        "1",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def capped(model, tmp_path_factory):
    """A server whose only way to close an idle connection within a test is the cap."""
    server = Server(
        model,
        tmp_path_factory.mktemp("capped"),
        "--header-timeout",
        "3600",
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--cpu-threads",
        "1",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return project_photo("one.jpg").read_bytes()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed(s: socket.socket) -> bool:
    """Wait until the server closes ``s`` (EOF or reset); False only when that has not
    happened within the hang guard."""
    s.settimeout(HANG_GUARD_S)
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _readyz(server: Server) -> dict:
    return httpx.get(server.url + "/readyz", timeout=HANG_GUARD_S).json()


# ---------------------------------------------------------------------------------------------
# Defect 3: slow uploads


def test_slow_uploads_cannot_starve_the_service(hard, photo):
    """40 clients that send headers (Content-Length 100000) and one byte hold upload slots,
    never queue slots (32): a normal request still gets 200 at once. The uploads themselves
    are bounded too: past ``--max-receiving``, 503."""
    head = (
        b"POST /v1/toonify HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    holders = []
    try:
        for _ in range(40):
            s = _connect(hard.port)
            s.sendall(head + b"\xff")
            holders.append(s)
        wait_until(lambda: _readyz(hard)["receiving"] == 40, "uploads not seen")
        assert _readyz(hard)["queue"] == 0
        r = httpx.post(hard.url + "/v1/toonify", content=photo, timeout=HANG_GUARD_S)
        assert r.status_code == 200, r.text[:300]  # a held queue slot would have been 503
        # The uploads in progress are bounded on their own.
        for _ in range(MAX_RECEIVING - 40):
            s = _connect(hard.port)
            s.sendall(head + b"\xff")
            holders.append(s)
        wait_until(lambda: _readyz(hard)["receiving"] == MAX_RECEIVING, "uploads not seen")
        r = httpx.post(hard.url + "/v1/toonify", content=photo, timeout=30)
        assert r.status_code == 503 and r.json()["kind"] == "overloaded"
        assert r.headers["retry-after"] == "1"
    finally:
        for s in holders:
            s.close()
    wait_until(lambda: _readyz(hard)["receiving"] == 0, "closed uploads still counted")
    assert httpx.post(hard.url + "/v1/toonify", content=photo, timeout=30).status_code == 200


# ---------------------------------------------------------------------------------------------
# Defect 6: idle connections, the connection cap, a tight open-file limit


def test_idle_and_trickling_connections_are_closed(hard):
    """Connections that never complete a request head are closed: silent ones, and ones that
    trickle header lines for as long as the server lets them (so only the head timeout can end
    them), also after a first answer on the same connection."""
    silent = [_connect(hard.port) for _ in range(5)]
    trickle = _connect(hard.port)
    # After an answer, the next request head also has to arrive in time.
    after = _connect(hard.port)
    after.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b"200 OK" in after.recv(4096)
    done = threading.Event()

    def drip(s: socket.socket) -> None:
        parts = [b"GET /hea", b"lthz HTT", b"P/1.1\r\n", b"Host: t\r\n"]
        while not done.is_set():  # header lines, never the blank line that ends the head
            try:
                s.sendall(parts.pop(0) if parts else b"X-A: 1\r\n")
            except OSError:
                return
            done.wait(0.2)  # pacing only: the test waits for the close, not for this

    for s in (trickle, after):
        threading.Thread(target=drip, args=(s,), daemon=True).start()
    try:
        for s in [*silent, trickle, after]:
            assert _closed(s)
            s.close()
    finally:
        done.set()
    assert httpx.get(hard.url + "/healthz").status_code == 200


def test_connection_cap_closes_the_longest_idle_connection(capped):
    """``capped`` closes no idle connection for an hour, so what closes them here is the cap:
    the oldest make room for new ones, and the newest still serve requests."""
    socks = [_connect(capped.port) for _ in range(MAX_CONNECTIONS + 20)]
    try:
        r = httpx.get(capped.url + "/healthz", timeout=HANG_GUARD_S)
        assert r.status_code == 200
        assert _closed(socks[0])  # the oldest made room
        socks[-1].sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        socks[-1].settimeout(HANG_GUARD_S)
        status, _, body = parse_response(read_response(socks[-1]))
        assert status == 200 and json.loads(body) == {"status": "ok"}  # the newest is open
    finally:
        for s in socks:
            s.close()
    assert "Traceback" not in capped.log()


def test_a_low_open_file_limit_keeps_health_checks_answered(model, tmp_path):
    """Issue 16, defect 6: with a low open-file limit, 150 idle sockets made /healthz time out
    and asyncio logged a traceback per accept attempt. The cap stays under the limit now."""
    server = Server(model, tmp_path / "nofile", "--cpu-threads", "1", nofile=160)
    socks = []
    try:
        ready = [json.loads(x) for x in server.log().splitlines() if '"ready"' in x]
        assert ready and ready[0]["max_connections"] < 150
        for _ in range(150):
            socks.append(_connect(server.port))
        for _ in range(3):  # accepted after the 150: their accept() failures come first
            assert httpx.get(server.url + "/healthz", timeout=HANG_GUARD_S).status_code == 200
        log = server.log()
        assert "Traceback" not in log and len(log) < 20_000, log[-2000:]
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_loop_errors_are_one_line_without_traceback_and_rate_limited(caplog):
    handler = LoopErrorLog(every_s=60)
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level("ERROR", logger="toon.serve"):
            for _ in range(1000):
                error = OSError(24, "Too many open files")
                message = "socket.accept() out of system resource"
                handler(loop, {"message": message, "exception": error})
    finally:
        loop.close()
    records = [r for r in caplog.records if r.name == "toon.serve"]
    assert len(records) == 1 and records[0].exc_info is None
    assert records[0].msg["event"] == "loop_error"


# ---------------------------------------------------------------------------------------------
# Defect 8 and the smaller ones: metric labels, redirects


def test_metric_labels_are_bounded(hard):
    tail = " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    for i in range(5):
        raw_request(hard.port, f"FOO{i} /healthz{tail}".encode())
        raw_request(hard.port, f"GET /scan-{i}{tail}".encode())
    metrics = httpx.get(hard.url + "/metrics").text
    assert "FOO" not in metrics and "scan-" not in metrics
    assert 'method="other"' in metrics and 'route="other"' in metrics


def test_trailing_slash_redirect_does_not_trust_the_host_header(hard):
    request = "GET /healthz/?a=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    status, headers, _ = parse_response(raw_request(hard.port, request.encode()))
    assert status == 307 and headers["location"] == "/healthz?a=1"
    request = "GET //evil.example/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    status, headers, _ = parse_response(raw_request(hard.port, request.encode()))
    assert status == 404 and "location" not in headers
    assert httpx.get(hard.url + "/readyz/", follow_redirects=True).status_code == 200


# ---------------------------------------------------------------------------------------------
# Defect 4: API keys fail closed


@pytest.mark.parametrize("value", [" , ", "", "\n,\n"])
def test_an_empty_key_variable_refuses_to_start(value):
    with pytest.raises(ServeError, match="TOON_API_KEYS is set but holds no API key"):
        load_api_keys(None, {"TOON_API_KEYS": value})


def test_an_empty_or_unusable_key_file_refuses_to_start(tmp_path):
    keys = tmp_path / "keys.txt"
    for text in ("", "\n  \n", "# only a comment\n"):
        keys.write_text(text)
        with pytest.raises(ServeError, match="no API keys"):
            load_api_keys(keys, {})
    keys.write_text("clé-non-ascii\n")
    with pytest.raises(ServeError, match="API key 1"):
        load_api_keys(keys, {})
    with pytest.raises(ServeError, match="cannot read"):
        load_api_keys(tmp_path / "missing.txt", {})


def test_the_cli_and_the_app_refuse_empty_keys(model, monkeypatch, capsys):
    from export.serve import create_app
    from export.serve_cli import main

    monkeypatch.setenv("TOON_API_KEYS", " , ")
    assert main(["--model", str(model)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("toon-serve: error:") and "TOON_API_KEYS" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(ServeError):
        create_app(ServeConfig(model=str(model), access_log=False))  # a worker process too


# ---------------------------------------------------------------------------------------------
# In process: the full queue, the decode budget


class GatedModel:
    """A Toonifier stand-in whose model call waits for ``gate`` (warm-up zeros pass)."""

    size = 64
    io = "uint8"
    device = "cpu"
    metadata = {"toon.size": "64"}
    path = Path("gated.onnx")

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()

    def align_options(self) -> dict:
        return {"size": self.size}

    def run(self, crops: np.ndarray) -> np.ndarray:
        if crops.any():
            self.entered.set()
            assert self.gate.wait(HANG_GUARD_S)
        return crops


def _serve_in_process(config: ServeConfig, toonifier, scenario):
    from export.serve import create_app

    app = create_app(config, toonifier=toonifier)
    service = app.state.service

    async def main():
        await service.start()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://t", timeout=60
            ) as client:
                return await scenario(client, service)
        finally:
            await service.stop()

    return asyncio.run(main())


def test_a_full_queue_answers_503_with_retry_after(photo):
    model = GatedModel()
    config = ServeConfig(model="gated.onnx", max_queue=1, access_log=False, cpu_threads=1)

    async def scenario(client, service):
        first = asyncio.create_task(client.post("/v1/toonify", content=photo))
        while not model.entered.is_set():  # the first request is at the model, in the queue
            await asyncio.sleep(0.01)
        second = await client.post("/v1/toonify", content=photo)
        readyz = await client.get("/readyz")
        model.gate.set()
        return await first, second, readyz, (await client.get("/metrics")).text

    first, second, readyz, metrics = _serve_in_process(config, model, scenario)
    assert first.status_code == 200
    assert second.status_code == 503 and second.json()["kind"] == "overloaded"
    assert second.headers["retry-after"] == "1"
    assert readyz.status_code == 200 and readyz.json()["queue"] == 1  # busy, not broken
    assert 'toon_errors_total{kind="overloaded"} 1' in metrics


def _flat_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 130, 140)).save(buf, "PNG")
    return buf.getvalue()


def test_concurrent_decodes_stay_within_the_decode_budget():
    """Four 1000x1000 uploads at once with a budget of one such image: they decode one after
    the other (each then finds no face), never two at once."""
    model = GatedModel()
    model.gate.set()
    config = ServeConfig(
        model="gated.onnx",
        max_pixels=1_000_000,
        max_decode_pixels=1_000_000,
        cpu_threads=4,
        access_log=False,
    )
    png = _flat_png(1000, 1000)

    async def scenario(client, service):
        answers = await asyncio.gather(*(client.post("/v1/toonify", content=png) for _ in range(4)))
        return answers, service.decode_budget

    answers, budget = _serve_in_process(config, model, scenario)
    assert [r.status_code for r in answers] == [422] * 4
    assert budget.peak == 1_000_000 and budget.held == 0 and budget.waiting == 0


def test_decode_budget_waits_first_come_first_served_and_survives_cancellation():
    async def main():
        budget = DecodeBudget(100)
        order: list[str] = []
        a = await budget.acquire(60)

        async def take(name: str, n: int) -> int:
            got = await budget.acquire(n)
            order.append(name)
            return got

        big = asyncio.create_task(take("big", 80))
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 10))  # would fit, but must not overtake
        gone = asyncio.create_task(take("gone", 30))
        while budget.waiting < 3:  # each waiter queues at its first step
            await asyncio.sleep(0)
        assert order == [] and budget.waiting == 3
        gone.cancel()
        budget.release(a)
        got_big = await big
        assert order[0] == "big"
        budget.release(got_big)
        budget.release(await small)
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert budget.held == 0 and budget.waiting == 0 and budget.peak == 90
        assert await budget.acquire(10**9) == 100  # more than the total: the whole budget
        return order

    assert asyncio.run(main()) == ["big", "small"]


def test_config_checks_the_new_limits():
    with pytest.raises(ValueError, match="max_decode_pixels"):
        ServeConfig(model="m.onnx", max_pixels=100, max_decode_pixels=99)
    for field in ("max_receiving", "max_connections"):
        with pytest.raises(ValueError, match=field):
            ServeConfig(model="m.onnx", **{field: 0})
    with pytest.raises(ValueError, match="header_timeout_s"):
        ServeConfig(model="m.onnx", header_timeout_s=0)
    assert ServeConfig(model="m.onnx", max_pixels=100).decode_pixels == 100

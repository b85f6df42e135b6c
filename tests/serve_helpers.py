"""Helpers for the toon-serve tests: a small exported model, a real server process, raw sockets.

The model is a random ``tiny`` student exported at 64 px (as in ``tests/export/test_export.py``),
built once per pytest session and shared by the serve test modules. Servers are real: ``toon-serve``
(``python -m export.serve_cli``) on port 0, the port read from its JSON log.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import REPO

SIZE = 64
STARTUP_TIMEOUT_S = 90
HANG_GUARD_S = 120  # how long a poll waits before calling it a hang; no passing run gets near


def wait_until(predicate, what: str, timeout: float = HANG_GUARD_S, interval: float = 0.02):
    """Poll ``predicate()`` until it returns something truthy and return that. Waits for an
    event, not for an amount of time: ``timeout`` only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"{what} (still not so after {timeout:g} s)"
        time.sleep(interval)
    return value


def serve_model(tmp_path_factory) -> Path:
    """The 64-px ONNX model, made on first use in this session's temporary root."""
    path = tmp_path_factory.getbasetemp() / "serve_model" / "toon.onnx"
    if path.exists():
        return path
    import torch

    from export.onnx_export import export_onnx
    from student.io import save_student
    from student.networks import build_generator, generator_arch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    arch = generator_arch("tiny")
    G = build_generator(arch).train()
    with torch.no_grad():  # non-trivial batch-norm statistics, as a trained student has
        for _ in range(2):
            G(torch.randn(4, 3, SIZE, SIZE))
    student = path.parent / "student.safetensors"
    save_student(G.eval(), arch, student, training={"resolution": SIZE})
    export_onnx(student, path)  # written atomically: a half-made model is never found
    return path


class Server:
    """``toon-serve`` in a subprocess on a free loopback port; JSON logs in files."""

    def __init__(
        self,
        model: Path,
        workdir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        nofile: int | None = None,
    ) -> None:
        """``nofile``: the server's open-file limit (soft and hard), as a tight container has."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = workdir / "stdout.jsonl"
        self.stderr_path = workdir / "stderr.jsonl"
        full_env = dict(os.environ, **(env or {}))
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
        )
        full_env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "export.serve_cli", "--model", str(model), "--port", "0"]
        cmd += ["--threads", "1", *args]
        self._out = open(self.stdout_path, "wb")  # closed in stop()
        self._err = open(self.stderr_path, "wb")
        preexec = None
        if nofile is not None:
            import resource

            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=self._out, stderr=self._err, preexec_fn=preexec
        )
        self.url = self._wait_for_port()
        self.wait_ready()

    def _wait_for_port(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        pattern = re.compile(r"Uvicorn running on (http://[0-9.]+:\d+)")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"toon-serve exited {self.proc.returncode}: {self.log()[-2000:]}"
                )
            m = pattern.search(self.log())
            if m:
                return m.group(1)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"toon-serve did not start: {self.log()[-2000:]}")

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"toon-serve not ready: {self.log()[-2000:]}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def access_log(self) -> list[dict]:
        """The JSON access-log lines written so far."""
        lines = self.stdout_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        self._err.close()
        return self.proc.returncode


def raw_request(port: int, data: bytes, read: bool = True, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; the whole answer (until the server closes or
    the answer's Content-Length is complete), or nothing when ``read`` is off."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if not read:
            return b""
        return read_response(s)


def read_response(s: socket.socket) -> bytes:
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m and len(body) >= int(m.group(1)):
                break
    return buf


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but carries almost no data (what a
    decompression bomb looks like to a server that checks before decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def expected_paste(model: Path, photo: np.ndarray) -> np.ndarray:
    """The reference answer for ``mode=paste``: align, one model call per photo, paste back."""
    from faces.align import align, paste_back

    toon = _toonifier(str(model))
    faces = align(photo, **toon.align_options())
    outputs = toon.run(np.stack([f.crop[:, :, :3] for f in faces]))
    return paste_back(photo, faces, list(outputs))


_TOONIFIERS: dict[str, object] = {}


def _toonifier(model: str):
    from export.runtime import Toonifier

    if model not in _TOONIFIERS:
        _TOONIFIERS[model] = Toonifier(model, device="cpu", threads=1)
    return _TOONIFIERS[model]

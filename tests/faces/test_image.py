"""faces.image.load_image: every kind of source, and the refusals (bombs, links, devices)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from faces.image import AlignError, ImageTooLargeError, load_image
from tests.conftest import REPO


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def photo() -> Image.Image:
    rs = np.random.RandomState(0)
    return Image.fromarray((rs.rand(24, 32, 3) * 255).astype(np.uint8))


def test_bytes_file_objects_and_streams_decode_like_a_path(photo, tmp_path):
    path = tmp_path / "p.png"
    photo.save(path)
    want = load_image(path)
    data = path.read_bytes()
    assert np.array_equal(load_image(data), want)
    assert np.array_equal(load_image(bytearray(data)), want)
    assert np.array_equal(load_image(memoryview(data)), want)
    assert np.array_equal(load_image(io.BytesIO(data)), want)
    with open(path, "rb") as f:
        assert np.array_equal(load_image(f), want)

    class Pipe(io.RawIOBase):  # a non-seekable stream such as stdin from a pipe
        def __init__(self, data: bytes) -> None:
            self.buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            chunk = self.buf.read(min(len(b), 1000))
            b[: len(chunk)] = chunk
            return len(chunk)

    assert np.array_equal(load_image(io.BufferedReader(Pipe(data))), want)
    with pytest.raises(AlignError, match="<bytes>: empty input"):
        load_image(b"")
    with pytest.raises(AlignError, match="stdin: not an image"):
        load_image(b"hello", name="stdin")


def test_strip_conversion_matches_pillow_for_odd_modes(photo, monkeypatch):
    import faces.image as fi

    monkeypatch.setattr(fi, "STRIP_BYTES", 7 * 32 * 4)  # several strips, a short last one
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    for img, mode in [
        (photo.convert("1"), "RGB"),
        (photo.convert("P"), "RGB"),
        (photo.convert("CMYK"), "RGB"),
        (rgba, "RGBA"),
        (rgba.convert("LA"), "RGBA"),
    ]:
        got = load_image(_png(img) if img.mode != "CMYK" else img)
        assert np.array_equal(got, np.asarray(img.convert(mode))), img.mode


def test_symlink_loop_broken_link_and_device_are_named(tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(AlignError, match="a.png: symbolic link loop"):
        load_image(tmp_path / "a.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(AlignError, match="broken symbolic link"):
        load_image(tmp_path / "gone.png")
    with pytest.raises(AlignError, match="no such file"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(AlignError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(AlignError, match="not a regular file"):
        load_image("/dev/zero")  # would otherwise be read for ever


def test_fifo_is_read_whole(photo, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    data = _png(photo)
    writer = subprocess.Popen(
        [sys.executable, "-c", f"open({str(fifo)!r}, 'wb').write({data!r})"],
    )
    try:
        assert load_image(fifo).shape == (24, 32, 3)
    finally:
        writer.wait(timeout=30)


def test_pixel_limit_from_the_header(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("1", (400, 300)).save(path)
    with pytest.raises(ImageTooLargeError, match=r"400x300 = 120,000 pixels, over the limit"):
        load_image(path, max_pixels=100_000)
    with pytest.raises(ImageTooLargeError):
        load_image(path.read_bytes(), max_pixels=100_000)
    assert load_image(path, max_pixels=120_000).shape == (300, 400, 3)
    assert load_image(path, max_pixels=None).shape == (300, 400, 3)


def write_bomb_png(path, width: int = 12000, height: int = 12000) -> None:
    """A black 1-bit PNG of the given size, written row by row (nothing full size in memory):
    12000 x 12000 is about 17 KB on disk and 144 megapixels decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat))
        f.write(chunk(b"IEND", b""))


BOMB_CODE = """
import resource, sys
from faces.image import AlignError, load_image
try:
    load_image(sys.argv[1])
except AlignError as e:
    print(e)
# Peak RSS of this program alone: VmHWM starts afresh at exec, while getrusage's ru_maxrss
# keeps the forking parent's peak (pytest with torch loaded) on Linux.
try:
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]
    print(int(hwm[0].split()[1]) // 1024)
except (OSError, IndexError):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    """Before the header check this decoded into about 1.5 GB (peak RSS, measured)."""
    bomb = tmp_path / "bomb.png"
    write_bomb_png(bomb)
    with pytest.warns(Image.DecompressionBombWarning), Image.open(bomb) as im:  # valid PNG
        assert im.size == (12000, 12000) and im.mode == "1"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-c", BOMB_CODE, str(bomb)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    message, peak_mb = r.stdout.strip().splitlines()
    assert "12000x12000 = 144,000,000 pixels, over the limit of 40,000,000" in message
    assert bomb.stat().st_size < 50_000
    assert int(peak_mb) < 200, f"peak RSS {peak_mb} MB"
    assert "DecompressionBombWarning" not in r.stderr

"""Image codecs of ``toon-serve``: request bytes to pixels and pixels to response bytes.

Both run in the service's thread pool, never on the event loop. Decoding is the service's
first line of defence against hostile uploads: only whitelisted formats are opened, and the
pixel count is checked from the header before anything is decoded (decompression bombs).
Failures are :class:`export.serve_api.ApiError` answers (400, 413, 415). :class:`DecodeBudget`
bounds the memory of the images decoded at once.

Imports: numpy, pillow, and the torch-free ``faces.align`` (EXIF, alpha and odd modes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.cli import error_line
from export.serve_api import ApiError
from faces.align import load_image

# Pillow format names accepted as input (JPEG also opens the multi-picture MPO files of phones).
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
INPUT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"
PNG_COMPRESS_LEVEL = 3  # zlib level: 6 (Pillow's default) costs ~2x the time for ~5% less size


def decode_image(data: bytes, max_pixels: int) -> tuple[np.ndarray, str]:
    """Request bytes -> upright (H, W, 3|4) uint8 RGB(A) and the Pillow format name; raises
    :class:`ApiError` (400 empty or not an image or corrupt, 413 too many pixels, 415 a format
    not accepted). The pixel count is checked from the header, before anything is decoded.
    :func:`open_image` then :func:`decode_opened`, for a caller that reserves memory between."""
    return decode_opened(open_image(data, max_pixels), max_pixels)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header of an upload (nothing decoded yet): the format whitelist and the pixel
    limit (:class:`ApiError` as :func:`decode_image`). ``img.size`` says what a decode costs."""
    if not data:
        raise ApiError(
            400,
            "empty_body",
            "empty body: send the photo as the request body or as the multipart file field 'image'",
        )
    Image.init()  # register every plugin (only the common ones are preloaded), once
    try:
        img = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except UnidentifiedImageError:
        other = _identify(data)
        if other:
            raise ApiError(
                415, "unsupported_format", f"unsupported image format {other}; send {INPUT_NAMES}"
            ) from None
        raise ApiError(400, "not_an_image", f"the body is not an image ({INPUT_NAMES})") from None
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", f"image exceeds {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ApiError(400, "corrupt_image", f"corrupt image ({short_reason(e)})") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ApiError(
            413,
            "too_many_pixels",
            f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}",
        )
    return img


def decode_opened(img: Image.Image, max_pixels: int) -> tuple[np.ndarray, str]:
    """Decode an image from :func:`open_image` (and close it): upright RGB(A) uint8 and the
    format name; 400 for a corrupt or truncated image."""
    with img:
        fmt = img.format or "?"
        try:
            img.load()
            rgb = load_image(img)
        except Image.DecompressionBombError:
            raise ApiError(413, "too_many_pixels", f"image exceeds {max_pixels} pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise ApiError(
                400, "corrupt_image", f"corrupt or truncated image ({short_reason(e)})"
            ) from None
    return rgb, fmt


class DecodeBudget:
    """The memory of decoded images, as pixels: a request reserves its image's pixel count
    (from the header) before decoding and gives it back when its answer is made, so the images
    being worked on at once never hold more than ``total`` pixels. One decoded 6300x6300 photo
    with its grayscale, alignment and paste-back copies takes about 500 MB to 1 GB: without a
    bound, eight at once take eight times that. Requests that do not fit wait, first come first
    served (a large image is not overtaken for ever by small ones). For one event loop.

        async with budget.hold(w * h):
            ...decode, align, run, paste, encode...
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("the decode budget must be at least 1 pixel")
        self.total = int(total)
        self.free = self.total
        self.peak = 0  # most pixels held at once (tests, metrics)
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @property
    def held(self) -> int:
        """Pixels reserved now."""
        return self.total - self.free

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return len(self._waiters)

    async def acquire(self, pixels: int) -> int:
        """Reserve ``pixels`` (at most ``total``), waiting for room; returns what to release."""
        n = max(1, min(int(pixels), self.total))
        if not self._waiters and self.free >= n:
            self._take(n)
            return n
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted just as the waiter went away: give it back
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # the head may have changed
            raise
        return n

    def release(self, n: int) -> None:
        """Give back ``n`` pixels from :meth:`acquire`; wakes the waiters that now fit."""
        self.free += n
        self._wake()

    def hold(self, pixels: int) -> contextlib.AbstractAsyncContextManager[int]:
        """``acquire`` ... ``release`` as an ``async with``."""

        @contextlib.asynccontextmanager
        async def held():
            n = await self.acquire(pixels)
            try:
                yield n
            finally:
                self.release(n)

        return held()

    def _take(self, n: int) -> None:
        self.free -= n
        self.peak = max(self.peak, self.total - self.free)

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            n, fut = self._waiters.popleft()
            if not fut.done():
                self._take(n)
                fut.set_result(None)


def _identify(data: bytes) -> str | None:
    """The format Pillow would read ``data`` as (header only, nothing decoded), or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:  # anything at all: then it is simply not an image we know
        return None


def short_reason(e: BaseException) -> str:
    """An exception's first line, at most 200 characters (to quote in a client's answer)."""
    return error_line(e)[:200]


def encode_image(array: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 (H, W, 3|4) -> PNG (alpha kept), JPEG (alpha dropped) or WebP (alpha kept)."""
    img = Image.fromarray(np.ascontiguousarray(array))
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()

"""Image codecs of ``toon-serve``: request bytes to pixels and pixels to response bytes.

Both run in the service's thread pool, never on the event loop. Decoding is the service's
first line of defence against hostile uploads: only whitelisted formats are opened, and the
pixel count is checked from the header before anything is decoded (decompression bombs).
Failures are :class:`export.serve_api.ApiError` answers (400, 413, 415).

Imports: numpy, pillow, and the torch-free ``faces.align`` (EXIF, alpha and odd modes).
"""

from __future__ import annotations

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
    not accepted). The pixel count is checked from the header, before anything is decoded."""
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
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise ApiError(
                413,
                "too_many_pixels",
                f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}",
            )
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

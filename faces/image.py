"""Reading photos for alignment: any file Pillow opens, upright and as 8-bit RGB or RGBA.

- a source is a path, encoded bytes, a binary file object (stdin, a pipe, an upload), a Pillow
  image or a numpy array;
- EXIF orientation is applied (a phone photo stored on its side comes out upright);
- RGBA, LA, PA and palette images with transparency keep their alpha (RGBA out);
- grayscale, bilevel, palette, CMYK, YCbCr, LAB, HSV become RGB;
- 16-bit and 32-bit grayscale (``I;16``, ``I``, ``F``) are scaled to 8 bits, not clipped;
- encoded input larger than ``max_pixels`` (width x height, read from the header) is refused
  before anything is decoded (decompression bombs: a 17 KB PNG can declare 144 megapixels),
  and a stream is read up to :data:`MAX_STREAM_BYTES`;
- decoding converts in strips of rows, so memory stays near the decoded image in its own mode
  plus the uint8 result (no full-size intermediate copies);
- an unreadable, corrupt or non-image source raises :class:`AlignError` naming it, saying
  what is wrong (no such file, broken link, symbolic link loop, permission denied, not a
  regular file, too large, corrupt).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.cli import ToonError

# Encoded input with more pixels (width x height, from the header) is refused before decoding;
# the same default as toon-serve's --max-pixels. 40 megapixels decode to 120 MB of RGB.
MAX_PIXELS = 40_000_000
# Bytes read from a stream (stdin, a pipe) before giving up: far above any real photo.
MAX_STREAM_BYTES = 256 << 20
STRIP_BYTES = 4 << 20
EXIF_ORIENTATION = 0x0112  # rows converted at a time (see _to_uint8)

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray


class AlignError(ToonError):
    """A one-line error for the user (unreadable file, missing model file, bad landmarks)."""


class ImageTooLargeError(AlignError):
    """Encoded input declares more pixels than the caller's ``max_pixels``."""


def _gray_to_u8(img: Image.Image) -> np.ndarray:
    """Scale a wide-range grayscale image to 8 bits (``I;16`` by 1/257, ``I`` likewise when its
    values exceed 255, ``F`` from [0, 1] or [0, 255])."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        # rint(a / 257) in integers: a = 257 k + r rounds up exactly when r >= 129.
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.mode == "I":
        if a.size and a.max() > 255:
            return ((np.clip(a, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float64))
    if a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.rint(np.clip(a, 0, 255)).astype(np.uint8)


def _to_uint8(img: Image.Image, mode: str) -> np.ndarray:
    """``img`` as a (H, W, len(mode)) uint8 array, converted a strip of rows at a time so that
    no full-size converted copy (nor its bytes) is ever held beside the result."""
    w, h = img.size
    out = np.empty((h, w, len(mode)), np.uint8)
    rows = max(1, STRIP_BYTES // max(1, w * len(mode)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "palette images with transparency" notice
        for y in range(0, h, rows):
            strip = img.crop((0, y, w, min(h, y + rows)))
            if strip.mode != mode:
                strip = strip.convert(mode)
            out[y : y + strip.height] = np.asarray(strip).reshape(strip.height, w, len(mode))
    return out


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A Pillow image (already upright) as (H, W, 3) RGB or (H, W, 4) RGBA uint8."""
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        return np.repeat(_gray_to_u8(img)[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "La", "PA", "RGBa")
    if mode in ("P", "L", "1") and "transparency" in img.info:
        has_alpha = True
    return _to_uint8(img, "RGBA" if has_alpha else "RGB")


def array_to_rgb(a: np.ndarray) -> np.ndarray:
    """A numpy image (H, W), (H, W, 1|2|3|4); uint8, uint16 or float in [0, 1]) as RGB/RGBA
    uint8. RGB order is assumed (no BGR guessing)."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise AlignError(f"image array must be (H, W) or (H, W, 1-4), got shape {a.shape}")
    if a.dtype == np.uint16:
        a = np.rint(a / 257.0).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float64))
        a = np.rint(np.clip(a * 255.0 if a.max(initial=0) <= 1.0 else a, 0, 255)).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 2:
        a = np.concatenate([np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1:]], axis=2)
    return np.ascontiguousarray(a)


def _os_error(name: str, path: Path, e: OSError) -> AlignError:
    """What an ``OSError`` from opening ``path`` means, in words."""
    if e.errno == errno.ENOENT:
        if os.path.islink(path):
            return AlignError(f"{name}: broken symbolic link (its target does not exist)")
        return AlignError(f"{name}: no such file")
    if e.errno == errno.ELOOP:
        return AlignError(f"{name}: symbolic link loop (the link resolves back to itself)")
    if e.errno in (errno.EACCES, errno.EPERM):
        return AlignError(f"{name}: permission denied")
    if e.errno == errno.EISDIR:
        return AlignError(f"{name}: is a directory, not an image")
    if e.errno == errno.ENOTDIR:
        return AlignError(f"{name}: no such file (a part of the path is not a folder)")
    if e.errno == errno.ENAMETOOLONG:
        return AlignError(f"{name}: file name too long")
    return AlignError(f"{name}: cannot read ({e.strerror or e})")


def _read_stream(f: BinaryIO, name: str, limit: int = MAX_STREAM_BYTES) -> bytes:
    """At most ``limit`` bytes of a stream; :class:`AlignError` when there are more."""
    try:
        data = f.read(limit + 1)
    except OSError as e:
        raise AlignError(f"{name}: cannot read ({e.strerror or e})") from None
    if data is None:  # a non-blocking stream with nothing ready
        data = b""
    if len(data) > limit:
        raise AlignError(f"{name}: more than {limit >> 20} MiB of input, not a photo")
    return bytes(data)


@contextlib.contextmanager
def _open_encoded(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO,
    max_pixels: int | None,
    name: str | None,
) -> Iterator[Image.Image]:
    """Open encoded input, check its declared size, decode it and apply EXIF orientation; the
    image is valid inside the ``with`` only (Pillow frees it when the file is closed)."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            name = name or str(path)
            try:
                st = os.stat(path)
                if stat.S_ISDIR(st.st_mode):
                    raise AlignError(f"{name}: is a directory, not an image")
                if stat.S_ISFIFO(st.st_mode):  # a pipe, e.g. <(curl ...): read it whole
                    with open(path, "rb") as f:
                        fp: BinaryIO = io.BytesIO(_read_stream(f, name))
                elif not stat.S_ISREG(st.st_mode):
                    raise AlignError(f"{name}: not a regular file (a device or socket)")
                else:
                    fp = stack.enter_context(open(path, "rb"))
            except OSError as e:
                raise _os_error(name, path, e) from None
        elif isinstance(source, (bytes, bytearray, memoryview)):
            name = name or "<bytes>"
            fp = io.BytesIO(source)
        elif hasattr(source, "read"):
            stream_name = getattr(source, "name", None)
            name = name or (stream_name if isinstance(stream_name, str) else "<stream>")
            try:
                seekable = bool(source.seekable()) if hasattr(source, "seekable") else False
            except (OSError, ValueError):
                seekable = False
            fp = source if seekable else io.BytesIO(_read_stream(source, name))
        else:
            raise TypeError(
                "expected a path, bytes, a binary file, a PIL image or a numpy array, "
                f"got {type(source).__name__}"
            )
        if isinstance(fp, io.BytesIO) and not fp.getbuffer().nbytes:
            raise AlignError(f"{name}: empty input, not an image")
        try:
            with warnings.catch_warnings():
                # Pillow warns above its own (higher) limit; ours is checked below.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = stack.enter_context(Image.open(fp))
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: image is {w}x{h} = {w * h:,} pixels, over the limit of "
                    f"{max_pixels:,} (refused before decoding: a decompression bomb or a "
                    "huge photo)"
                )
            img.load()
            yield _upright(img)
        except UnidentifiedImageError:
            raise AlignError(
                f"{name}: not an image file (or a format Pillow cannot read)"
            ) from None
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"{name}: image too large to open safely ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            if isinstance(e, OSError) and e.errno is not None:  # the file, not its contents
                raise AlignError(f"{name}: cannot read ({e.strerror or e})") from None
            raise AlignError(f"{name}: corrupt or truncated image ({e})") from None


def _upright(img: Image.Image) -> Image.Image:
    """``img`` with its EXIF orientation applied; ``img`` itself (not a copy) when upright."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: keep the pixels as stored
        return img
    if orientation not in range(2, 9):
        return img
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img


def open_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open and decode ``path`` upright (EXIF orientation applied); :class:`AlignError` if the
    file cannot be read as an image or declares more than ``max_pixels`` pixels."""
    with _open_encoded(path, max_pixels, None) as img:
        return img.copy()


def load_image(
    source: ImageLike, max_pixels: int | None = MAX_PIXELS, name: str | None = None
) -> np.ndarray:
    """Path, encoded bytes, binary file object, Pillow image or numpy array -> upright
    (H, W, 3|4) uint8 RGB(A).

    ``max_pixels`` (None: no limit of ours) bounds encoded input, checked from the header before
    decoding; a Pillow image or an array already holds its pixels and is not checked. ``name``
    is what error messages call the source (default: the path, the stream's name, ``<bytes>``).
    """
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    if isinstance(source, Image.Image):
        return pil_to_array(_upright(source))
    with _open_encoded(source, max_pixels, name) as img:
        return pil_to_array(img)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601, as Pillow's ``L``) of an RGB(A) uint8 image, ignoring alpha."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, :, :3]), "RGB").convert("L"))


def composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """RGBA over a flat background colour -> RGB (RGB input is returned as is)."""
    if rgba.shape[2] == 3:
        return rgba
    a = rgba[:, :, 3:4].astype(np.float32) / 255.0
    out = rgba[:, :, :3].astype(np.float32) * a + np.asarray(background, np.float32) * (1 - a)
    return np.rint(out).astype(np.uint8)

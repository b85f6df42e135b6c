"""Reading photos for alignment: any file Pillow opens, upright and as 8-bit RGB or RGBA.

- EXIF orientation is applied (a phone photo stored on its side comes out upright);
- RGBA, LA, PA and palette images with transparency keep their alpha (RGBA out);
- grayscale, bilevel, palette, CMYK, YCbCr, LAB, HSV become RGB;
- 16-bit and 32-bit grayscale (``I;16``, ``I``, ``F``) are scaled to 8 bits, not clipped;
- an unreadable, corrupt or non-image file raises :class:`AlignError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.cli import ToonError

ImageLike = str | os.PathLike | Image.Image | np.ndarray


class AlignError(ToonError):
    """A one-line error for the user (unreadable file, missing model file, bad landmarks)."""


def _gray_to_u8(img: Image.Image) -> np.ndarray:
    """Scale a wide-range grayscale image to 8 bits (``I;16`` by 1/257, ``I`` likewise when its
    values exceed 255, ``F`` from [0, 1] or [0, 255])."""
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        return np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
    if img.mode == "I":
        if a.size and a.max() > 255:
            return np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    a = np.nan_to_num(a.astype(np.float64))
    if a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.rint(np.clip(a, 0, 255)).astype(np.uint8)


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A Pillow image (already upright) as (H, W, 3) RGB or (H, W, 4) RGBA uint8."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        return np.asarray(img).copy()
    if mode in ("I", "F") or mode.startswith("I;16"):
        return np.repeat(_gray_to_u8(img)[:, :, None], 3, axis=2)
    has_alpha = mode in ("LA", "La", "PA", "RGBa")
    if mode in ("P", "L", "1") and "transparency" in img.info:
        has_alpha = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "palette images with transparency" notice
        return np.asarray(img.convert("RGBA" if has_alpha else "RGB")).copy()


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


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and decode ``path`` upright (EXIF orientation applied); :class:`AlignError` if the
    file cannot be read as an image."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            try:
                upright = ImageOps.exif_transpose(img)
            except Exception:  # a damaged EXIF block: keep the pixels as stored
                upright = img.copy()
            return upright if upright is not None else img.copy()
    except FileNotFoundError:
        raise AlignError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AlignError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise AlignError(f"{path}: not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise AlignError(f"{path}: image too large to open safely ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise AlignError(f"{path}: corrupt or truncated image ({e})") from None


def load_image(source: ImageLike) -> np.ndarray:
    """Path, Pillow image or numpy array -> upright (H, W, 3|4) uint8 RGB(A)."""
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    if isinstance(source, Image.Image):
        try:
            upright = ImageOps.exif_transpose(source)
        except Exception:
            upright = source
        return pil_to_array(upright if upright is not None else source)
    if isinstance(source, (str, os.PathLike)):
        return pil_to_array(open_image(source))
    raise TypeError(f"expected a path, PIL image or numpy array, got {type(source).__name__}")


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

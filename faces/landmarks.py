"""dlib's shape predictor (68 landmarks) in numpy, from a cached, memory-mapped copy of its model.

Why: ``dlib.shape_predictor`` takes ~0.55 s to deserialise the 95 MB 68-point model and holds
Python's lock meanwhile, so no thread can hide it behind ``toon-infer``'s other start-up work.
Here the model file is converted once into a ``safetensors`` file (plain arrays, JSON metadata
under ``toon``) that later runs memory-map in milliseconds, and the prediction is re-done in numpy.

The predictor (Kazemi & Sullivan 2014, "One Millisecond Face Alignment with an Ensemble of
Regression Trees", as dlib implements it). Shapes live in box-normalised coordinates (0..1 across
the face box). Starting from the mean shape, each of the ``C`` cascades

1. fits the similarity transform (rotation and scale only, least squares) from the mean shape to
   the current shape;
2. reads ``F`` feature pixels: feature ``f`` sits at anchor landmark ``anchor[f]`` of the current
   shape plus ``deltas[f]`` turned and scaled by that transform; it is mapped into the image by
   the box (``left + u * (right - left)``), rounded to the nearest pixel, and reads the gray value
   there (0 outside the image);
3. walks ``T`` regression trees of depth ``d`` (``S = 2^d - 1`` splits, heap order: node ``i``
   goes to ``2i + 1`` when ``pixel[idx1] - pixel[idx2] > thresh``, else ``2i + 2``) and adds each
   tree's leaf (a shape increment) to the current shape, in tree order, in float32 as dlib does.

The landmarks are the final shape mapped into the image; dlib rounds them to whole pixels
(``round=True`` here gives the same integers).

dlib's file format, as read by ``read_dlib_shape_predictor`` (every value is one *integer token*:
a header byte whose low 4 bits give the byte count ``n`` (1..8) and whose bit 7 is the sign,
then ``n`` bytes of the magnitude, little-endian):

- a float is two tokens, mantissa and exponent: ``mantissa * 2**exponent`` (exponents 32000,
  32001, 32002 mean +inf, -inf and nan);
- a column vector (``matrix<float,0,1>``) is ``-rows, -cols`` then its values row by row (older
  files write ``rows, cols`` positive);
- a ``std::vector`` is its length then its items;
- the predictor is ``version (1), initial_shape, forests, anchor_idx, deltas`` with
  ``forests[c][t] = (splits, leaf_values)``, ``splits[s] = (idx1, idx2, thresh)``,
  ``leaf_values[l]`` a column vector, ``anchor_idx[c]`` a vector of integers and ``deltas[c]``
  a vector of ``(x, y)`` float pairs.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.files import atomic_write

FORMAT = "toon-distill/dlib-shape-predictor"
FORMAT_VERSION = 1
ARRAYS = ("initial", "anchor", "deltas", "split_idx", "split_thresh", "leaves")
_SPECIAL_EXPONENTS = {32000: np.inf, 32001: -np.inf, 32002: np.nan}


class LandmarkModelError(ValueError):
    """A model or cache file that cannot be read (one line: what, which file)."""


@dataclass(frozen=True)
class ShapeModel:
    """The predictor's arrays. ``P`` landmarks, ``C`` cascades, ``F`` feature pixels per cascade,
    ``T`` trees per cascade, ``S`` splits and ``L = S + 1`` leaves per tree."""

    initial: np.ndarray  # (P, 2) float32: mean shape, box-normalised (x, y)
    anchor: np.ndarray  # (C, F) int32: landmark each feature pixel hangs on
    deltas: np.ndarray  # (C, F, 2) float32: feature offset from its anchor, mean-shape frame
    split_idx: np.ndarray  # (C, T, S, 2) int32: the two feature pixels a split compares
    split_thresh: np.ndarray  # (C, T, S) float32: go left when difference > thresh
    leaves: np.ndarray  # (C, T, L, P, 2) float32: shape increments

    def __post_init__(self) -> None:
        P = self.initial.shape[0]
        C, F = self.anchor.shape
        C2, T, S, _ = self.split_idx.shape
        want = {
            "initial": (P, 2),
            "deltas": (C, F, 2),
            "split_idx": (C, T, S, 2),
            "split_thresh": (C, T, S),
            "leaves": (C, T, S + 1, P, 2),
        }
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise LandmarkModelError(f"shape predictor array {name} is {got}, expected {shape}")
        if C2 != C or (S + 1) & S:
            raise LandmarkModelError(f"shape predictor with {C}/{C2} cascades and {S} splits")
        if self.anchor.size and (self.anchor.min() < 0 or self.anchor.max() >= P):
            raise LandmarkModelError("shape predictor anchor index out of range")
        if self.split_idx.size and (self.split_idx.min() < 0 or self.split_idx.max() >= F):
            raise LandmarkModelError("shape predictor split index out of range")

    @property
    def num_parts(self) -> int:
        return int(self.initial.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}


# ---------------------------------------------------------------------------------------------
# dlib's serialisation


def _tokens(data: bytes, path: str) -> np.ndarray:
    """All integer tokens of a dlib serialised stream, in order (int64).

    The tokens chain (each header says where the next one starts), which numpy cannot follow;
    a regular expression walks the chain in C and returns the header of every token. Headers
    are read as latin-1 text so that each is a cached one-character string."""
    bodies = "|".join(f"[\\x{n:02x}\\x{n | 0x80:02x}]" + "." * n for n in (3, 1, 2, 4, 5, 6, 7, 8))
    pattern = re.compile(f"(?=(.))(?:{bodies})", re.S)
    text = data.decode("latin-1")
    headers = pattern.findall(text)
    head = np.frombuffer("".join(headers).encode("latin-1"), np.uint8)
    del headers
    nbytes = (head & 0x0F).astype(np.int64)
    pos = np.empty(len(head) + 1, np.int64)
    pos[0] = 0
    np.cumsum(nbytes + 1, out=pos[1:])
    if pos[-1] != len(data):
        raise LandmarkModelError(f"{path} is not a dlib shape predictor (not dlib's serialisation)")
    # Eight bytes after each header, as one little-endian integer, cut to the token's length.
    buf = np.frombuffer(data + bytes(8), np.uint8)
    window = np.lib.stride_tricks.sliding_window_view(buf, 8)[pos[:-1] + 1]
    keep = np.array([(1 << (8 * n)) - 1 for n in range(9)], np.uint64)
    value = (window.view("<u8")[:, 0] & keep[nbytes]).view(np.int64)
    value[head >= 0x80] *= -1
    return value


def _floats(mantissa: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """dlib's portable floats (``mantissa * 2**exponent``) as float32."""
    special = exponent >= 32000
    out = np.ldexp(mantissa.astype(np.float64), np.where(special, 0, exponent).astype(np.int32))
    if special.any():
        for e, v in _SPECIAL_EXPONENTS.items():
            out[exponent == e] = v
    return out.astype(np.float32)


class _Reader:
    """Walks the token stream; the bulk (trees) is cut out as regular blocks and checked."""

    def __init__(self, tok: np.ndarray, path: str) -> None:
        self.tok, self.k, self.path = tok, 0, path

    def fail(self, what: str) -> LandmarkModelError:
        return LandmarkModelError(
            f"{self.path} is not a dlib shape predictor ({what} at token {self.k})"
        )

    def take(self, n: int) -> np.ndarray:
        if self.k + n > len(self.tok):
            raise self.fail("file ends early")
        out = self.tok[self.k : self.k + n]
        self.k += n
        return out

    def int(self) -> int:
        return int(self.take(1)[0])

    def size(self, limit: int = 1 << 24) -> int:
        n = self.int()
        if not 0 <= n <= limit:
            raise self.fail(f"bad length {n}")
        return n

    def column(self) -> np.ndarray:
        rows, cols = self.int(), self.int()
        if rows < 0 or cols < 0:
            rows, cols = -rows, -cols
        if cols != 1 or rows > 1 << 16:
            raise self.fail(f"expected a column vector, got {rows}x{cols}")
        pairs = self.take(2 * rows).reshape(rows, 2)
        return _floats(pairs[:, 0], pairs[:, 1])

    def forest(self, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One cascade: (T, S, 2) split indices, (T, S) thresholds, (T, L, rows) leaves."""
        T = self.size()
        if T == 0:
            raise self.fail("empty cascade")
        S = int(self.tok[self.k])
        if not 0 <= S < 1 << 12:
            raise self.fail(f"bad split count {S}")
        stride = 1 + 4 * S + 1 + (S + 1) * (2 + 2 * rows)
        block = self.take(T * stride).reshape(T, stride)
        splits = block[:, 1 : 1 + 4 * S].reshape(T, S, 4)
        leaf = block[:, 2 + 4 * S :].reshape(T, S + 1, 2 + 2 * rows)
        if (
            (block[:, 0] != S).any()
            or (block[:, 1 + 4 * S] != S + 1).any()
            or (np.abs(leaf[:, :, 0]) != rows).any()
            or (np.abs(leaf[:, :, 1]) != 1).any()
        ):
            raise self.fail("trees of different sizes")
        thresh = _floats(splits[:, :, 2], splits[:, :, 3])
        values = _floats(leaf[:, :, 2::2], leaf[:, :, 3::2])
        return splits[:, :, :2].astype(np.int32), thresh, values


def read_dlib_shape_predictor(path: str | Path) -> ShapeModel:
    """Parse dlib's ``shape_predictor`` file (see the module docstring for the format)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise LandmarkModelError(f"cannot read shape predictor {path}: {e.strerror}") from None
    r = _Reader(_tokens(data, path), path)
    if r.int() != 1:
        raise r.fail("unknown version")
    initial = r.column()
    if len(initial) % 2 or not len(initial):
        raise r.fail("odd mean shape")
    P = len(initial) // 2
    C = r.size(1 << 10)
    forests = [r.forest(2 * P) for _ in range(C)]
    if len({f[0].shape for f in forests}) > 1:
        raise r.fail("cascades of different sizes")
    if r.size() != C:
        raise r.fail("anchor list does not match the cascades")
    anchor = []
    for _ in range(C):
        anchor.append(r.take(r.size()).astype(np.int32))
    if r.size() != C:
        raise r.fail("delta list does not match the cascades")
    deltas = []
    for c in range(C):
        F = r.size()
        if F != len(anchor[c]):
            raise r.fail("deltas do not match the anchors")
        xy = r.take(4 * F).reshape(F, 2, 2)
        deltas.append(_floats(xy[..., 0], xy[..., 1]))
    if r.k != len(r.tok):
        raise r.fail("data after the model")
    if len({len(a) for a in anchor}) > 1:
        raise r.fail("cascades with different feature counts")
    T, S = forests[0][0].shape[:2]
    return ShapeModel(
        initial=initial.reshape(P, 2),
        anchor=np.stack(anchor),
        deltas=np.stack(deltas),
        split_idx=np.stack([f[0] for f in forests]),
        split_thresh=np.stack([f[1] for f in forests]),
        leaves=np.stack([f[2] for f in forests]).reshape(C, T, S + 1, P, 2),
    )


# ---------------------------------------------------------------------------------------------
# The cache: a safetensors file, memory-mapped


def cache_dir() -> Path:
    """``$TOON_CACHE_DIR``, else ``$XDG_CACHE_HOME/toon-distill``, else
    ``~/.cache/toon-distill``."""
    if os.environ.get("TOON_CACHE_DIR"):
        return Path(os.environ["TOON_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "toon-distill"


def _source_key(source: Path) -> dict:
    st = source.stat()
    return {"path": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_path(source: str | Path) -> Path:
    """Where the converted copy of ``source`` lives: one per source path."""
    source = Path(source).resolve()
    tag = format(zlib.crc32(str(source).encode()), "08x")
    return cache_dir() / f"{source.stem}.{tag}.safetensors"


def save_model(model: ShapeModel, path: str | Path, source: dict) -> Path:
    """Write ``model`` atomically as safetensors; ``source`` (path, size, mtime_ns, sha256) says
    what it was converted from. A crc32 of the data catches a damaged file."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in model.arrays().items()}
    crc = 0
    for name in sorted(arrays):  # safetensors lays tensors out sorted by name
        crc = zlib.crc32(arrays[name].tobytes(), crc)
    meta = {"kind": FORMAT, "version": FORMAT_VERSION, "source": source, "crc32": crc}
    blob = save(arrays, metadata={"toon": json.dumps(meta, sort_keys=True)})
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


_DTYPES = {"F32": np.float32, "I32": np.int32}


def load_model(path: str | Path, source: dict | None = None, check_crc: bool = True) -> ShapeModel:
    """Memory-map a converted model; ``source`` (when given) must match the one it was made from.
    Raises LandmarkModelError for a foreign, damaged or stale file."""
    path = Path(path)
    bad = f"landmark model cache {path}"
    try:
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise LandmarkModelError(f"cannot read {bad}: {e}") from None
    try:
        n = int.from_bytes(buf[:8], "little")
        if len(buf) < 8 or not 2 <= n <= min(len(buf) - 8, 1 << 20):
            raise LandmarkModelError(f"{bad} is not a safetensors file")
        header = json.loads(bytes(buf[8 : 8 + n]))
        meta = json.loads(header.pop("__metadata__", {}).get("toon", "{}"))
    except (ValueError, AttributeError, TypeError):
        raise LandmarkModelError(f"{bad} has an unreadable header") from None
    if meta.get("kind") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise LandmarkModelError(f"{bad} is not a {FORMAT} v{FORMAT_VERSION} file")
    if source is not None and meta.get("source", {}).get("size") != source["size"]:
        raise LandmarkModelError(f"{bad} was made from another file")
    if source is not None and meta["source"].get("mtime_ns") != source["mtime_ns"]:
        raise LandmarkModelError(f"{bad} is older than a change to its source")
    data = np.frombuffer(buf, np.uint8, offset=8 + n)
    arrays = {}
    try:
        for name in ARRAYS:
            info = header[name]
            a, b = info["data_offsets"]
            if not 0 <= a <= b <= len(data):
                raise LandmarkModelError(f"{bad} is truncated")
            arrays[name] = data[a:b].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise LandmarkModelError(f"{bad} is damaged ({e})") from None
    if check_crc:
        crc = 0
        for name in sorted(header):
            a, b = header[name]["data_offsets"]
            crc = zlib.crc32(data[a:b], crc)
        if crc != meta.get("crc32"):
            raise LandmarkModelError(f"{bad} is damaged (checksum)")
    return ShapeModel(**arrays)


def convert(source: str | Path, dest: str | Path | None = None) -> ShapeModel:
    """Read dlib's file ``source`` and write its cached copy (default ``cache_path(source)``).
    Returns the model (in memory, so a read-only cache directory still works)."""
    from common.files import file_sha256

    source = Path(source)
    key = _source_key(source)
    model = read_dlib_shape_predictor(source)
    key["sha256"] = file_sha256(source)
    try:
        save_model(model, dest or cache_path(source), key)
    except OSError as e:
        print(
            f"toon: cannot cache the landmark model ({e}); converting it every run", file=sys.stderr
        )
    return model


def load_shape_model(source: str | Path, verbose: bool = True) -> ShapeModel:
    """The numpy model of dlib's ``source`` file: memory-mapped from the cache, or converted now
    (once, a few seconds) when the cache is missing, foreign, damaged or older than ``source``."""
    source = Path(source)
    try:
        key = _source_key(source)
    except OSError as e:
        raise LandmarkModelError(f"cannot read shape predictor {source}: {e.strerror}") from None
    cached = cache_path(source)
    why = "first use"
    if cached.exists():
        try:
            return load_model(cached, key)
        except LandmarkModelError as e:
            why = str(e)
    t = time.perf_counter()
    model = convert(source, cached)
    if verbose:
        print(
            f"toon: converted landmark model {source.name} for fast loading in "
            f"{time.perf_counter() - t:.1f} s ({why}) -> {cached}",
            file=sys.stderr,
        )
    return model


# ---------------------------------------------------------------------------------------------
# Prediction


def similarity_2x2(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation+scale (no reflection, no shear) mapping centred ``src`` points onto
    centred ``dst`` points, as a 2x2 matrix [[a, -b], [b, a]] (float64; the translation is not
    needed). Equal to Umeyama's solution, which dlib computes with an SVD."""
    s = src.astype(np.float64)
    d = dst.astype(np.float64)
    s = s - s.mean(0)
    d = d - d.mean(0)
    var = float((s * s).sum())
    if var == 0:
        return np.eye(2)
    a = float((s * d).sum()) / var
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / var
    return np.array([[a, -b], [b, a]])


def predict(
    model: ShapeModel, gray: np.ndarray, rect: tuple[int, int, int, int], round: bool = True
) -> np.ndarray:
    """Landmarks (P, 2) of the face in ``rect`` = (left, top, right, bottom), dlib's inclusive
    pixel box, on ``gray`` (H, W) uint8. ``round=True`` gives dlib's whole pixels (float64
    array); ``round=False`` the unrounded positions."""
    if gray.ndim != 2:
        raise ValueError(f"gray image expected, got shape {gray.shape}")
    h, w = gray.shape
    left, top, right, bottom = (float(v) for v in rect)
    origin = np.array([left, top])
    scale = np.array([right - left, bottom - top])
    flat = gray.reshape(-1)
    C, T, S, _ = model.split_idx.shape
    depth = (S + 1).bit_length() - 1
    trees = np.arange(T)
    shape = model.initial.copy()
    for c in range(C):
        m = similarity_2x2(model.initial, shape).astype(np.float32)
        pts = model.deltas[c] @ m.T + shape[model.anchor[c]]  # float32, like dlib
        xy = np.floor(pts.astype(np.float64) * scale + origin + 0.5).astype(np.int64)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        pix = np.where(inside, flat[np.where(inside, xy[:, 1] * w + xy[:, 0], 0)], 0)
        pix = pix.astype(np.float32)
        node = np.zeros(T, np.int64)
        idx, thresh = model.split_idx[c], model.split_thresh[c]
        for _ in range(depth):
            i1, i2 = idx[trees, node, 0], idx[trees, node, 1]
            node = 2 * node + np.where(pix[i1] - pix[i2] > thresh[trees, node], 1, 2)
        steps = model.leaves[c, trees, node - S]  # (T, P, 2)
        # dlib adds the leaves one by one to the current shape (float32); a reduction over the
        # first axis of [shape, leaf_0, leaf_1, ...] adds in that same order.
        shape = np.concatenate([shape[None], steps]).sum(0, dtype=np.float32)
    out = shape.astype(np.float64) * scale + origin
    return np.floor(out + 0.5) if round else out

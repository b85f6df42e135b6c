"""The pairs dataset format: deterministic tar shards, per-shard sidecars and ``manifest.json``.

Torch-free: writing, reading, verifying, statistics and previews need only numpy and Pillow.

Layout of a dataset folder ``OUT/`` (format ``toon-pairs``, format version 1)::

    OUT/manifest.json          the dataset: layout, config, teachers, finished shards
    OUT/shard-000000.tar       pairs [0, S)            (S = shard_size)
    OUT/shard-000000.json      sidecar: the shard is finished (sha256, count, config hash)
    OUT/shard-000001.tar       pairs [S, 2S) ...
    OUT/.shard-000002.tar.XXXXXXXX.tmp   a shard being written (never under a final name)

Shard ``i`` is named ``shard-{i:06d}.tar`` and holds the pairs
``[i * shard_size, min((i + 1) * shard_size, count))``; ``num_shards = ceil(count / shard_size)``.

**Samples.** Pair ``k`` (the global pair index) has ``__key__ = f"{k:09d}"`` and three tar members,
in this order (sorted by name): ``{key}.dst.png`` (target: the blended teacher's render),
``{key}.json`` and ``{key}.src.png`` (input: the base render, or the real photo). Images are RGB
uint8 PNGs of ``resolution x resolution``. The JSON (UTF-8, sorted keys, no spaces) is::

    {"index": k, "seed": seed + k, "truncation": psi or null, "noise_mode": "const",
     "latent_kind": "z" | "projected", "teachers": {"base": sha256 or null, "toon": sha256},
     "source": photo path relative to --photos (projected pairs only),
     "truncation_cutoff": int (only when set),
     "style_mix": crossover layer or null (only when mix_prob > 0),
     "perturb_std": float (only when perturb_std > 0)}

Samples follow in key order, so ``webdataset.WebDataset(urls, shardshuffle=False)`` yields dicts
with ``__key__``, ``src.png``, ``dst.png`` and ``json``.

**Byte reproducibility.** Tar members are written in GNU format with mtime 0, uid/gid 0, empty
uname/gname, mode 0o644, regular files only; the archive ends with tarfile's standard padding.
PNGs are written by Pillow with ``compress_level`` from the config (default 1), no other options,
no metadata chunks (IHDR, IDAT, IEND only). The same pixels therefore give the same bytes with the
same Pillow build (its zlib is part of the encoder: Pillow's wheels bundle zlib-ng).

**Sidecars and the manifest.** A process that finishes shard ``i`` renames its temporary tar into
place, then writes ``shard-{i:06d}.json`` atomically::

    {"format": "toon-pairs-shard", "format_version": 1, "config_sha256": ..., "index": i,
     "name": "shard-00000i.tar", "first": ..., "count": ..., "sha256": ..., "bytes": ...,
     "written": {informational: device, threads, host, torch/Pillow/zlib versions, seconds}}

A shard counts as finished only with a sidecar of the dataset's config hash whose tar exists
(resume and ``verify`` also check its sha256). ``manifest.json`` is created once, atomically and
only if absent (so concurrent first runs agree on the config), and is afterwards *rebuilt from
the sidecars* by every process that finishes and by ``verify``: rebuild, re-read the sidecars,
and rebuild again until they did not change meanwhile. Processes writing disjoint shards into one
folder therefore never lose each other's entries. The manifest::

    {"format": "toon-pairs", "format_version": 1, "resolution": R, "count": N,
     "shard_size": S, "num_shards": n, "complete": bool, "finished_count": pairs in listed shards,
     "shards": [{"name", "index", "first", "count", "sha256", "bytes"}, ...]  (finished only),
     "config": {the generating config: everything pair bytes depend on},
     "config_sha256": sha256 of the canonical config JSON,
     "teachers": {"base": {"file", "sha256"} or null, "toon": {"file", "sha256"}}}

Only finished shards are listed (in index order); ``complete`` says whether all ``num_shards``
are. manifest.json and the tars are byte-identical however the shards were split across
processes (sidecars differ in ``written``). Readers: :func:`read_manifest`, :func:`iter_pairs`,
:func:`verify` (torch-free).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMAT = "toon-pairs"
FORMAT_VERSION = 1
SIDECAR_FORMAT = "toon-pairs-shard"
MANIFEST_NAME = "manifest.json"
KEY_DIGITS = 9
DEFAULT_PNG_LEVEL = 1
MEMBER_EXTS = ("dst.png", "json", "src.png")  # tar order within a sample (sorted)
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
_SHARD_RE = re.compile(r"^shard-(\d{6})\.(tar|json)$")
_TEMP_RE = re.compile(r"^\..+\.tmp$")
_ENTRY_KEYS = ("name", "index", "first", "count", "sha256", "bytes")


class PairsError(Exception):
    """A pairs job or dataset problem, with a one-line message for the user."""


# ---------------------------------------------------------------------------------------------
# Names and layout


def shard_name(index: int) -> str:
    """``shard-{index:06d}.tar``."""
    return f"shard-{index:06d}.tar"


def sidecar_name(index: int) -> str:
    """``shard-{index:06d}.json``: the finished-shard record next to the tar."""
    return f"shard-{index:06d}.json"


def pair_key(k: int) -> str:
    """The ``__key__`` of pair ``k``: ``f"{k:09d}"``."""
    return f"{k:0{KEY_DIGITS}d}"


def num_shards_for(count: int, shard_size: int) -> int:
    """``ceil(count / shard_size)``."""
    return math.ceil(count / shard_size)


def shard_range(index: int, count: int, shard_size: int) -> range:
    """The pair indices of shard ``index``."""
    return range(index * shard_size, min((index + 1) * shard_size, count))


# ---------------------------------------------------------------------------------------------
# Encoding


def canonical_json(obj: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces (the per-sample ``json`` member)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def config_sha256(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a config dict."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


def encode_png(image: np.ndarray, level: int = DEFAULT_PNG_LEVEL) -> bytes:
    """HWC RGB uint8 -> PNG bytes with fixed Pillow settings (``compress_level`` only)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HWC RGB uint8 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or any Pillow image) bytes -> HWC RGB uint8."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an HWC RGB uint8 image to ``size x size`` with Pillow's Lanczos (no-op if equal)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    im = Image.fromarray(image, mode="RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def load_photo(path: str | os.PathLike, size: int) -> np.ndarray:
    """An aligned photo as ``size x size`` RGB uint8 (Lanczos-resized when needed)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise PairsError(f"{path}: unreadable image ({e})") from None
    if arr.shape[0] != arr.shape[1]:
        raise PairsError(
            f"{path}: aligned photos must be square, this one is {arr.shape[1]}x{arr.shape[0]}"
        )
    return resize_rgb(arr, size)


def encode_pair(
    src: np.ndarray | str, dst: np.ndarray, size: int, level: int
) -> tuple[bytes, bytes]:
    """PNG-encode one pair at ``size`` (worker-process entry point; ``src`` may be a photo path)."""
    src_img = load_photo(src, size) if isinstance(src, str) else resize_rgb(src, size)
    return encode_png(src_img, level), encode_png(resize_rgb(dst, size), level)


# ---------------------------------------------------------------------------------------------
# Atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp makes 0o600


def temp_path(final: Path) -> Path:
    """A new hidden temporary file next to ``final``: ``.{name}.XXXXXXXX.tmp`` (usual mode)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    return Path(tmp)


def write_atomic(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``data`` to a temporary name, then rename it to ``path``."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(out: Path, index: int) -> list[str]:
    """Remove temporary files of shard ``index`` left by a killed run; returns their names."""
    removed = []
    for name in (shard_name(index), sidecar_name(index)):
        for p in out.glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _HashingFile:
    """A write-only file wrapper that hashes what passes through (for tarfile)."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()

    def flush(self) -> None:
        self.f.flush()


class ShardWriter:
    """Writes one deterministic tar shard under a temporary name; :meth:`commit` renames it.

    ``add(key, members)`` appends a sample's members (``{"src.png": bytes, ...}``) in sorted
    extension order. :meth:`abort` removes the temporary file.
    """

    def __init__(self, out: Path, index: int) -> None:
        self.final = out / shard_name(index)
        self.tmp = temp_path(self.final)
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._hasher = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hasher, mode="w", format=tarfile.GNU_FORMAT)  # type: ignore[call-overload]
        self.samples = 0

    def add(self, key: str, members: Mapping[str, bytes]) -> None:
        """Append one sample; members are written sorted by extension."""
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def commit(self) -> tuple[str, int]:
        """Finish the archive, fsync, rename into place; returns ``(sha256, bytes)``."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.final)
        return self._hasher.sha.hexdigest(), self._hasher.size

    def abort(self) -> None:
        """Drop the partial archive."""
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Sidecars and the manifest


def write_sidecar(out: Path, record: Mapping[str, Any]) -> None:
    """Write ``shard-{index:06d}.json`` atomically (the shard's finished record)."""
    data = json.dumps(dict(record), indent=2, sort_keys=True).encode() + b"\n"
    write_atomic(out / sidecar_name(int(record["index"])), data)


def read_sidecar(out: Path, index: int) -> dict[str, Any] | None:
    """The sidecar of shard ``index``, or None when absent or unreadable."""
    try:
        rec = json.loads((out / sidecar_name(index)).read_bytes())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == SIDECAR_FORMAT else None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a dataset folder (PairsError when not a dataset)."""
    mpath = Path(path) / MANIFEST_NAME
    try:
        man = json.loads(mpath.read_bytes())
    except FileNotFoundError:
        raise PairsError(f"{path}: no {MANIFEST_NAME}; not a toon-pairs dataset") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PairsError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise PairsError(f"{mpath}: not a toon-pairs manifest")
    if man.get("format_version") != FORMAT_VERSION:
        raise PairsError(
            f"{mpath}: format version {man.get('format_version')!r} is not supported "
            f"(this toon-pairs reads version {FORMAT_VERSION})"
        )
    return man


def _expected_sidecar(man: Mapping[str, Any], index: int) -> dict[str, Any]:
    r = shard_range(index, man["count"], man["shard_size"])
    return {"config_sha256": man["config_sha256"], "first": r.start, "count": len(r)}


def sidecar_matches(man: Mapping[str, Any], rec: Mapping[str, Any] | None, index: int) -> bool:
    """Whether a sidecar records shard ``index`` of this manifest's config and layout."""
    if rec is None or rec.get("index") != index or rec.get("name") != shard_name(index):
        return False
    return all(rec.get(k) == v for k, v in _expected_sidecar(man, index).items())


def _listed_shards(out: Path, man: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries = []
    for index in range(man["num_shards"]):
        rec = read_sidecar(out, index)
        if sidecar_matches(man, rec, index) and (out / shard_name(index)).is_file():
            entries.append(
                {k: rec[k] for k in ("name", "index", "first", "count", "sha256", "bytes")}
            )
    return entries


def manifest_bytes(man: Mapping[str, Any], shards: Sequence[Mapping[str, Any]]) -> bytes:
    """The manifest JSON for a static part plus a list of finished shards."""
    full = dict(man)
    full["shards"] = list(shards)
    full["complete"] = len(shards) == man["num_shards"]
    full["finished_count"] = sum(int(s["count"]) for s in shards)
    return json.dumps(full, indent=2, sort_keys=True).encode() + b"\n"


def init_manifest(out: Path, static: Mapping[str, Any]) -> dict[str, Any]:
    """Create ``manifest.json`` if absent (atomically, first writer wins), else check that the
    existing one has the same config; returns the manifest on disk.

    Raises PairsError listing the differences when ``OUT`` holds another config or layout, or
    when ``OUT`` holds files that are not a toon-pairs dataset.
    """
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / MANIFEST_NAME
    if not mpath.exists():
        foreign = sorted(
            p.name for p in out.iterdir() if not (_SHARD_RE.match(p.name) or _TEMP_RE.match(p.name))
        )
        if foreign:
            raise PairsError(
                f"{out}: not empty and not a toon-pairs dataset (holds {foreign[0]}"
                f"{' ...' if len(foreign) > 1 else ''}); choose a new or empty --out"
            )
        tmp = temp_path(mpath)
        try:
            tmp.write_bytes(manifest_bytes(static, []))
            try:
                os.link(tmp, mpath)  # atomic create-if-absent
            except FileExistsError:
                pass
            except OSError:  # file systems without hard links
                if not mpath.exists():
                    os.replace(tmp, mpath)
        finally:
            tmp.unlink(missing_ok=True)
    existing = read_manifest(out)
    diffs = config_differences(existing, static)
    if diffs:
        raise PairsError(
            f"{out} was generated with other settings ({'; '.join(diffs[:6])}"
            f"{' ...' if len(diffs) > 6 else ''}); rerun with the same settings to resume, "
            "or choose a new --out"
        )
    return existing


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"field old -> new"`` for each layout or config field that differs between manifests."""
    keys = ("resolution", "count", "shard_size", "num_shards", "config")
    a = _flatten({k: old.get(k) for k in keys})
    b = _flatten({k: new.get(k) for k in keys})
    return [
        f"{k.removeprefix('config.')} {a.get(k)!r} -> {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def rebuild_manifest(out: Path, max_rounds: int = 20) -> dict[str, Any]:
    """Rewrite ``manifest.json`` from the sidecars until they stop changing under us."""
    man = read_manifest(out)
    static = {k: v for k, v in man.items() if k not in ("shards", "complete", "finished_count")}
    entries = _listed_shards(out, static)
    for _ in range(max_rounds):
        write_atomic(out / MANIFEST_NAME, manifest_bytes(static, entries), sync=False)
        again = _listed_shards(out, static)
        if again == entries:
            break
        entries = again
    return read_manifest(out)


def shard_problem(
    out: Path, man: Mapping[str, Any], index: int, check_hash: bool = True
) -> tuple[str, str]:
    """``(status, detail)`` of shard ``index``: status ``ok``, ``missing``, ``unfinished``
    (a tar without sidecar: killed before it was recorded), ``stale`` (sidecar of another config
    or layout) or ``corrupt`` (size or sha256 differ from the sidecar)."""
    rec = read_sidecar(out, index)
    tar = out / shard_name(index)
    if rec is None:
        if tar.exists():
            return "unfinished", "tar without sidecar (interrupted before it was recorded)"
        return "missing", "not written yet"
    if not sidecar_matches(man, rec, index):
        return "stale", "sidecar from another config or layout"
    if not tar.is_file():
        return "missing", "tar missing although its sidecar is present"
    size = tar.stat().st_size
    if size != rec.get("bytes"):
        return "corrupt", f"{size} bytes, sidecar says {rec.get('bytes')}"
    if check_hash and file_sha256(tar) != rec.get("sha256"):
        return "corrupt", "sha256 differs from the sidecar"
    return "ok", ""


# ---------------------------------------------------------------------------------------------
# Reading


def _group_samples(tf: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    key: str | None = None
    sample: dict[str, bytes] = {}
    for info in tf:
        if not info.isfile():
            continue
        base, _, ext = info.name.partition(".")
        if key is not None and base != key:
            yield key, sample
            sample = {}
        key = base
        f = tf.extractfile(info)
        sample[ext] = f.read() if f is not None else b""
    if key is not None:
        yield key, sample


def iter_pairs(
    path: str | os.PathLike, keys: Iterable[int | str] | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]:
    """Yield ``(key, src HWC uint8, dst HWC uint8, meta dict)`` in key order from the finished
    shards listed in the manifest; ``keys`` (ints or zero-padded strings) selects pairs."""
    path = Path(path)
    man = read_manifest(path)
    wanted: dict[int, set[int]] | None = None  # shard index -> keys
    if keys is not None:
        wanted = defaultdict(set)
        for k in keys:
            wanted[int(k) // man["shard_size"]].add(int(k))
        listed = {s["index"] for s in man["shards"]}
        absent = sorted(
            k
            for i, ks in wanted.items()
            for k in ks
            if i not in listed or not 0 <= k < man["count"]
        )
        if absent:
            raise PairsError(
                f"{path}: pairs {absent[:5]}{' ...' if len(absent) > 5 else ''} are not in a "
                "finished shard"
            )
    for entry in man["shards"]:
        if wanted is not None and entry["index"] not in wanted:
            continue
        with tarfile.open(path / entry["name"]) as tf:
            for key, sample in _group_samples(tf):
                if wanted is not None and int(key) not in wanted[entry["index"]]:
                    continue
                try:
                    yield (
                        key,
                        decode_png(sample["src.png"]),
                        decode_png(sample["dst.png"]),
                        json.loads(sample["json"]),
                    )
                except (KeyError, OSError, ValueError) as e:
                    raise PairsError(f"{path / entry['name']}: bad sample {key}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Verify


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``shards`` holds ``{"name", "status", "detail"}`` per shard."""

    path: str
    count: int
    num_shards: int
    ok_pairs: int = 0
    shards: list[dict[str, str]] = field(default_factory=list)
    stray_temps: list[str] = field(default_factory=list)
    manifest_updated: bool = False

    @property
    def ok(self) -> bool:
        """True when every shard is present and intact."""
        return all(s["status"] == "ok" for s in self.shards)

    def problems(self) -> list[dict[str, str]]:
        """The shards that are not ok."""
        return [s for s in self.shards if s["status"] != "ok"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": self.path,
            "ok": self.ok,
            "count": self.count,
            "ok_pairs": self.ok_pairs,
            "num_shards": self.num_shards,
            "ok_shards": sum(s["status"] == "ok" for s in self.shards),
            "problems": self.problems(),
            "stray_temps": self.stray_temps,
            "manifest_updated": self.manifest_updated,
        }


def _check_members(path: Path, man: Mapping[str, Any], index: int, deep: bool) -> str:
    r = shard_range(index, man["count"], man["shard_size"])
    res = man["resolution"]
    try:
        with tarfile.open(path) as tf:
            names = [m.name for m in tf.getmembers()]
            expected = [f"{pair_key(k)}.{ext}" for k in r for ext in MEMBER_EXTS]
            if names != expected:
                return f"{len(names)} members, expected {len(expected)} in key order"
            if deep:
                for key, sample in _group_samples(tf):
                    for ext in ("src.png", "dst.png"):
                        img = decode_png(sample[ext])
                        if img.shape != (res, res, 3):
                            return f"{key}.{ext} is {img.shape}, expected {res}x{res} RGB"
                    if json.loads(sample["json"]).get("index") != int(key):
                        return f"{key}.json has another index"
    except (tarfile.TarError, OSError, ValueError, KeyError) as e:
        return f"unreadable tar: {type(e).__name__}: {e}"
    return ""


def verify(
    path: str | os.PathLike, deep: bool = False, update_manifest: bool = True
) -> VerifyReport:
    """Check every shard of a dataset: sidecar, size, sha256, member names and order (``deep``:
    also decode every image and JSON). Brings ``manifest.json`` up to date with the sidecars
    first (``update_manifest``), as after processes that were killed before rebuilding it."""
    path = Path(path)
    man = read_manifest(path)
    rep = VerifyReport(str(path), man["count"], man["num_shards"])
    if update_manifest:
        before = [s.get("name") for s in man["shards"]]
        try:
            man = rebuild_manifest(path)
        except OSError:
            pass  # read-only folder: verify what is there
        rep.manifest_updated = [s.get("name") for s in man["shards"]] != before
    rep.stray_temps = sorted(p.name for p in path.iterdir() if _TEMP_RE.match(p.name))
    for index in range(man["num_shards"]):
        status, detail = shard_problem(path, man, index, check_hash=True)
        if status == "ok":
            detail = _check_members(path / shard_name(index), man, index, deep)
            status = "corrupt" if detail else "ok"
        rep.shards.append({"name": shard_name(index), "status": status, "detail": detail})
        if status == "ok":
            rep.ok_pairs += len(shard_range(index, man["count"], man["shard_size"]))
    return rep


# ---------------------------------------------------------------------------------------------
# Stats and preview


def dataset_stats(path: str | os.PathLike, sample: int = 64) -> dict[str, Any]:
    """Counts, sizes on disk (from tar headers), the config, and pixel statistics over the
    first ``sample`` pairs (mean RGB of inputs and targets, mean |dst - src|)."""
    path = Path(path)
    man = read_manifest(path)
    src_bytes = dst_bytes = total = 0
    for entry in man["shards"]:
        total += int(entry["bytes"])
        with tarfile.open(path / entry["name"]) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".src.png"):
                    src_bytes += m.size
                elif m.name.endswith(".dst.png"):
                    dst_bytes += m.size
    pairs = int(man["finished_count"])
    src_sum = np.zeros(3)
    dst_sum = np.zeros(3)
    diff = 0.0
    n = 0
    kinds: dict[str, int] = {}
    mixed = 0
    if sample > 0 and pairs:
        for _, src, dst, meta in iter_pairs(path, keys=_first_keys(man, sample)):
            src_sum += src.reshape(-1, 3).mean(0)
            dst_sum += dst.reshape(-1, 3).mean(0)
            diff += float(np.abs(dst.astype(np.int16) - src.astype(np.int16)).mean())
            kinds[meta.get("latent_kind", "?")] = kinds.get(meta.get("latent_kind", "?"), 0) + 1
            mixed += meta.get("style_mix") is not None
            n += 1
    cfg = man["config"]
    return {
        "path": str(path),
        "resolution": man["resolution"],
        "count": man["count"],
        "finished_pairs": pairs,
        "num_shards": man["num_shards"],
        "finished_shards": len(man["shards"]),
        "complete": man["complete"],
        "bytes": total,
        "bytes_per_pair": round(total / pairs) if pairs else None,
        "src_png_bytes_mean": round(src_bytes / pairs) if pairs else None,
        "dst_png_bytes_mean": round(dst_bytes / pairs) if pairs else None,
        "config": cfg,
        "teachers": man["teachers"],
        "sample": {
            "pairs": n,
            "latent_kinds": kinds,
            "style_mixed": mixed,
            "src_mean_rgb": [round(float(v) / n, 2) for v in src_sum] if n else None,
            "dst_mean_rgb": [round(float(v) / n, 2) for v in dst_sum] if n else None,
            "mean_abs_dst_minus_src": round(diff / n, 3) if n else None,
        },
    }


def _first_keys(man: Mapping[str, Any], n: int, start: int = 0) -> list[int]:
    keys: list[int] = []
    for entry in man["shards"]:
        for k in range(max(entry["first"], start), entry["first"] + entry["count"]):
            if len(keys) >= n:
                return keys
            keys.append(k)
    return keys


def preview_grid(
    path: str | os.PathLike, n: int = 16, start: int = 0, cols: int | None = None
) -> np.ndarray:
    """The first ``n`` finished pairs from pair ``start`` as one HWC uint8 image.

    Each cell is ``src | dst`` side by side (``R x 2R``); cells fill rows of ``cols`` (default
    ``ceil(sqrt(m))`` for the ``m`` pairs found), so the image is
    ``ceil(m / cols) * R`` high and ``cols * 2R`` wide.
    """
    man = read_manifest(path)
    keys = _first_keys(man, n, start)
    if not keys:
        raise PairsError(f"{path}: no finished pairs to preview")
    cells = [np.concatenate([src, dst], axis=1) for _, src, dst, _ in iter_pairs(path, keys)]
    cols = cols or math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / cols)
    h, w, _ = cells[0].shape
    grid = np.zeros([rows * h, cols * w, 3], dtype=np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = cell
    return grid


def save_png_atomic(image: np.ndarray, path: str | os.PathLike, level: int = 6) -> Path:
    """Write an HWC RGB uint8 image as PNG atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, encode_png(image, level), sync=False)
    return path


def list_photos(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive) as sorted relative POSIX paths."""
    root = Path(folder)
    if not root.is_dir():
        raise PairsError(f"{root}: photo folder not found")
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )

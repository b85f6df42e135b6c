"""The pairs dataset format: deterministic tar shards, per-shard sidecars and ``manifest.json``.

Torch-free: writing and reading shards needs only numpy and Pillow (so do :mod:`pairs.verify`
and :mod:`pairs.overview`, which read through this module).

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
     "latent_kind": "z" | "projected" | "encoded",
     "teachers": {"base": sha256 or null, "toon": sha256},
     "source": photo path relative to --photos (projected and encoded pairs only),
     "truncation_cutoff": int (only when set),
     "style_mix": crossover layer or null (only when mix_prob > 0),
     "perturb_std": float (only when perturb_std > 0)}

Names on disk: the per-sample JSON calls truncation psi ``truncation`` (the manifest's
``config`` and the code say ``truncation_psi``); format version 1 keeps that key, so the one
mapping is :func:`pairs.render.pair_meta`.

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
the sidecars* by every process that finishes, and by ``verify --update-manifest`` (a plain
``verify`` writes nothing): rebuild, re-read the sidecars, and rebuild again until they did not
change meanwhile. Processes writing disjoint shards into one folder therefore never lose each
other's entries. The manifest::

    {"format": "toon-pairs", "format_version": 1, "resolution": R, "count": N,
     "shard_size": S, "num_shards": n, "complete": bool, "finished_count": pairs in listed shards,
     "shards": [{"name", "index", "first", "count", "sha256", "bytes"}, ...]  (finished only),
     "config": {the generating config: everything pair bytes depend on},
     "config_sha256": sha256 of the canonical config JSON,
     "teachers": {"base": {"file", "sha256"} or null, "toon": {"file", "sha256"}}}

Only finished shards are listed (in index order); ``complete`` says whether all ``num_shards``
are. manifest.json and the tars are byte-identical however the shards were split across
processes (sidecars differ in ``written``).

**Held-out split** (deterministic by key, independent of shards, processes and order): pair
``key`` is held out when ``int.from_bytes(sha256(key.encode("ascii")).digest()[:8], "big") %
10000 < round(100 * percent)`` (:func:`is_held_out`). The student trains on the rest and
evaluates on the held-out pairs.

**Reading** (one reader for generation, ``verify``, ``stats``/``preview``, the student's loader
and export's calibration): :func:`read_manifest` checks the format; :func:`complete_shards`
checks that a dataset is finished and consistent; :func:`read_samples` groups the tar members of
a sequence of shards into samples ``{"__key__", "__url__", "src.png", "dst.png", "json"}``
(webdataset's layout), skipping unselected pairs unread; :func:`decode_pair` checks and decodes
the two images; :func:`iter_pairs` puts them together. Verification: :mod:`pairs.verify`;
statistics and previews: :mod:`pairs.inspect`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.cli import ToonError
from common.files import atomic_write_bytes, file_sha256, temp_path

FORMAT = "toon-pairs"
FORMAT_VERSION = 1
SIDECAR_FORMAT = "toon-pairs-shard"
MANIFEST_NAME = "manifest.json"
KEY_DIGITS = 9
DEFAULT_PNG_LEVEL = 1
MEMBER_EXTS = ("dst.png", "json", "src.png")  # tar order within a sample (sorted)
ENTRY_KEYS = ("name", "index", "first", "count", "sha256", "bytes")  # a manifest shard entry
HOLDOUT_BUCKETS = 10000
_SHARD_RE = re.compile(r"^shard-(\d{6})\.(tar|json)$")
TEMP_RE = re.compile(r"^\..+\.tmp$")  # temporary files (common.files.temp_path names)


class PairsError(ToonError):
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
# The held-out split


def holdout_bucket(key: str) -> int:
    """A pair's bucket in [0, 10000): the first 8 bytes of ``sha256(key)``, big-endian, mod
    10000."""
    digest = hashlib.sha256(key.encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") % HOLDOUT_BUCKETS


def is_held_out(key: str, percent: float) -> bool:
    """Whether pair ``key`` belongs to the held-out split of ``percent`` percent."""
    return holdout_bucket(key) < round(percent * HOLDOUT_BUCKETS / 100)


# ---------------------------------------------------------------------------------------------
# Encoding


def canonical_json(obj: Any) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces (the per-sample ``json`` member)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def config_sha256(config: Any) -> str:
    """sha256 of the canonical JSON of a config dict (or any JSON value)."""
    return hashlib.sha256(canonical_json(config)).hexdigest()


def encode_png(image: np.ndarray, level: int = DEFAULT_PNG_LEVEL) -> bytes:
    """HWC RGB uint8 -> PNG bytes with fixed Pillow settings (``compress_level`` only)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HWC RGB uint8 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def decode_image(data: bytes, resolution: int, what: str) -> np.ndarray:
    """A sample's PNG -> HWC RGB uint8, checked to be RGB ``resolution x resolution``
    (PairsError naming ``what`` otherwise)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise PairsError(f"{what}: unreadable PNG ({e})") from None
    if img.mode != "RGB" or img.size != (resolution, resolution):
        raise PairsError(
            f"{what}: expected RGB {resolution}x{resolution}, got {img.mode} "
            f"{img.size[0]}x{img.size[1]}"
        )
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Writing shards


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


def remove_stale_temps(out: Path, index: int) -> list[str]:
    """Remove temporary files of shard ``index`` left by a killed run; returns their names."""
    removed = []
    for name in (shard_name(index), sidecar_name(index)):
        for p in out.glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


# ---------------------------------------------------------------------------------------------
# Sidecars and the manifest


def write_sidecar(out: Path, record: Mapping[str, Any]) -> None:
    """Write ``shard-{index:06d}.json`` atomically and fsynced (the shard's finished record)."""
    data = json.dumps(dict(record), indent=2, sort_keys=True).encode() + b"\n"
    atomic_write_bytes(out / sidecar_name(int(record["index"])), data, sync=True)


def read_sidecar(out: Path, index: int) -> dict[str, Any] | None:
    """The sidecar of shard ``index``, or None when absent or unreadable."""
    try:
        rec = json.loads((out / sidecar_name(index)).read_bytes())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == SIDECAR_FORMAT else None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``manifest.json`` of a dataset folder and check its format and version (PairsError
    when the folder is missing or not a toon-pairs dataset). Finished or not: see
    :func:`complete_shards` for readers that need the whole set."""
    mpath = Path(path) / MANIFEST_NAME
    try:
        man = json.loads(mpath.read_bytes())
    except FileNotFoundError:
        if not Path(path).exists():
            raise PairsError(f"{path}: pairs dataset not found") from None
        raise PairsError(
            f"{path}: no {MANIFEST_NAME}; not a toon-pairs dataset (toon-pairs generate writes it)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PairsError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise PairsError(f"{mpath}: not a toon-pairs manifest (format is not {FORMAT!r})")
    if man.get("format_version") != FORMAT_VERSION:
        raise PairsError(
            f"{mpath}: unsupported format_version {man.get('format_version')!r} "
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
            assert rec is not None
            entries.append({k: rec[k] for k in ENTRY_KEYS})
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
            p.name for p in out.iterdir() if not (_SHARD_RE.match(p.name) or TEMP_RE.match(p.name))
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


def _static_part(man: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in man.items() if k not in ("shards", "complete", "finished_count")}


def manifest_from_sidecars(out: Path, man: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest :func:`rebuild_manifest` would write now (``man``: the one on disk, read
    when not given), without writing anything."""
    static = _static_part(read_manifest(out) if man is None else man)
    return json.loads(manifest_bytes(static, _listed_shards(out, static)))


def rebuild_manifest(out: Path, max_rounds: int = 20) -> dict[str, Any]:
    """Rewrite ``manifest.json`` from the sidecars until they stop changing under us."""
    static = _static_part(read_manifest(out))
    entries = _listed_shards(out, static)
    for _ in range(max_rounds):
        atomic_write_bytes(out / MANIFEST_NAME, manifest_bytes(static, entries))
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


@dataclass(frozen=True)
class ShardEntry:
    """One finished shard as the manifest lists it (``sha256`` is ``""`` when not given)."""

    name: str
    first: int
    count: int
    sha256: str


def complete_shards(
    root: str | os.PathLike, manifest: Mapping[str, Any], verify: bool = False
) -> tuple[ShardEntry, ...]:
    """The shards of a finished dataset, checked: well-formed entries, all ``num_shards``
    listed, contiguous from pair 0 to ``count``, plain file names, every file present;
    ``verify`` also compares every shard's sha256 (reads all the data). Raises PairsError."""
    root = Path(root)
    mpath = root / MANIFEST_NAME
    try:
        resolution = int(manifest["resolution"])
        count = int(manifest["count"])
        shards = tuple(
            ShardEntry(str(s["name"]), int(s["first"]), int(s["count"]), str(s.get("sha256", "")))
            for s in manifest["shards"]
        )
    except (KeyError, TypeError, ValueError) as e:
        raise PairsError(f"{mpath}: malformed manifest ({type(e).__name__}: {e})") from None
    if resolution < 1 or count < 0:
        raise PairsError(f"{mpath}: bad resolution {resolution} or count {count}")
    num_shards = int(manifest.get("num_shards", len(shards)))
    if manifest.get("complete") is False or len(shards) < num_shards:
        done = sum(s.count for s in shards)
        raise PairsError(
            f"{root}: dataset is incomplete ({len(shards)} of {num_shards} shards, {done} of "
            f"{count} pairs); finish it by running the same toon-pairs generate command again"
        )
    if num_shards != len(shards):
        raise PairsError(
            f"{mpath}: num_shards is {manifest['num_shards']} but {len(shards)} shards are listed"
        )
    expected_first = 0
    for s in shards:
        if s.first != expected_first:
            raise PairsError(
                f"{mpath}: shard {s.name} starts at pair {s.first}, expected {expected_first}"
            )
        expected_first += s.count
        if "/" in s.name or "\\" in s.name or s.name.startswith("."):
            raise PairsError(f"{mpath}: bad shard name {s.name!r}")
        if not (root / s.name).is_file():
            raise PairsError(f"{root / s.name}: shard listed in the manifest is missing")
    if expected_first != count:
        raise PairsError(f"{mpath}: shards hold {expected_first} pairs but count is {count}")
    if verify:
        for s in shards:
            if s.sha256 and file_sha256(root / s.name) != s.sha256:
                raise PairsError(f"{root / s.name}: sha256 differs from the manifest (corrupt?)")
    return shards


# ---------------------------------------------------------------------------------------------
# Reading samples


def _tar_samples(
    tf: tarfile.TarFile, url: str, select: Callable[[str], bool] | None
) -> Iterator[dict[str, Any]]:
    sample: dict[str, Any] = {}
    for info in tf:
        if not info.isfile():
            continue
        key, _, ext = info.name.partition(".")
        if select is not None and not select(key):
            continue  # skipped without reading its bytes
        if sample.get("__key__") != key:
            if sample:
                yield sample
            sample = {"__key__": key, "__url__": url}
        f = tf.extractfile(info)
        sample[ext] = f.read() if f is not None else b""
    if sample:
        yield sample


def read_samples(
    paths: Iterable[str | os.PathLike], select: Callable[[str], bool] | None = None
) -> Iterator[dict[str, Any]]:
    """The samples of the shards ``paths`` (read in order, lazily: ``paths`` may be endless),
    as webdataset lays them out: ``{"__key__": key, "__url__": shard path, "src.png": bytes,
    "dst.png": bytes, "json": bytes}``, members grouped by consecutive key.

    ``select(key)`` picks pairs; the members of other pairs are skipped without reading their
    bytes. An unreadable or truncated shard raises PairsError.
    """
    for path in paths:
        url = str(path)
        try:
            with tarfile.open(path) as tf:
                yield from _tar_samples(tf, url, select)
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PairsError(f"{url}: unreadable shard ({first})") from None


def decode_pair(sample: Mapping[str, Any], resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` HWC RGB uint8 of a sample from :func:`read_samples`, each checked to be
    ``resolution x resolution``."""
    where = f"{sample.get('__url__', 'shard')}: pair {sample.get('__key__', '?')}"
    out = []
    for part in ("src.png", "dst.png"):
        if part not in sample:
            raise PairsError(f"{where} has no {part}")
        out.append(decode_image(sample[part], resolution, f"{where} {part}"))
    return out[0], out[1]


def iter_pairs(
    path: str | os.PathLike, keys: Iterable[int | str] | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]:
    """Yield ``(key, src HWC uint8, dst HWC uint8, meta dict)`` in key order from the finished
    shards listed in the manifest; ``keys`` (ints or zero-padded strings) selects pairs."""
    path = Path(path)
    man = read_manifest(path)
    entries = list(man["shards"])
    select = None
    if keys is not None:
        wanted = {int(k) for k in keys}
        listed = {s["index"] for s in entries}
        absent = sorted(
            k for k in wanted if k // man["shard_size"] not in listed or not 0 <= k < man["count"]
        )
        if absent:
            raise PairsError(
                f"{path}: pairs {absent[:5]}{' ...' if len(absent) > 5 else ''} are not in a "
                "finished shard"
            )
        shard_indices = {k // man["shard_size"] for k in wanted}
        entries = [s for s in entries if s["index"] in shard_indices]
        wanted_keys = {pair_key(k) for k in wanted}
        select = wanted_keys.__contains__
    resolution = int(man["resolution"])
    for sample in read_samples((path / s["name"] for s in entries), select):
        src, dst = decode_pair(sample, resolution)
        try:
            meta = json.loads(sample["json"])
        except (KeyError, ValueError) as e:
            raise PairsError(
                f"{sample['__url__']}: pair {sample['__key__']}: no readable json ({e})"
            ) from None
        yield sample["__key__"], src, dst, meta

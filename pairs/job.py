"""Setting a pair generation job up: the request, checks, loaded teachers and the manifest.

:class:`GenerateConfig` is the request as the user states it (``toon-pairs generate`` flags one to
one); :func:`prepare_job` checks it, loads the teachers (and the projected latents and photos),
resolves the defaults and builds the static manifest whose ``config`` holds everything the pairs'
bytes depend on; :func:`describe` is ``--dry-run``'s view of the resolved job.

**Devices.** ``precision`` ``fp32`` (default on CPU, ``force_fp32=True``) or ``fp16`` (default
on CUDA: the generator's fp16 blocks) is part of the config. Byte identity across processes and
machines needs the same device type and the same torch, Pillow and zlib builds, and on CPU the
same number of torch threads (``--threads``: oneDNN's convolutions round differently with 1 and
2 threads). A dataset may mix devices; each shard's sidecar records where and how it was made.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.files import file_sha256
from common.runs import pick_device
from pairs import shards
from pairs.photos import list_photos
from pairs.render import RenderedBatch, noise_layers
from pairs.selection import select_shards
from pairs.shards import PairsError
from pairs.writer import default_workers
from teacher.io import load_generator
from teacher.networks import Generator
from teacher.spec import CheckpointError

PAIR_RECIPE = 1  # version of the rules in pairs.render; part of the config
DEFAULT_SHARD_SIZE = 1000
DEFAULT_BATCH = 16
DEFAULT_TRUNCATION = 0.7
NOISE_MODES = ("const", "random", "none")
PRECISIONS = ("auto", "fp32", "fp16")
TARGETS = ("render", "delta")


@dataclass(frozen=True)
class GenerateConfig:
    """A pair generation job as the user states it (``toon-pairs generate`` flags one to one).

    Fields that decide the pairs' bytes become the manifest's ``config``; ``device``,
    ``workers`` and the shard selection (``shard_index``, ``task``, ``use_slurm``) only decide
    how and where they are made.
    """

    out: str  # dataset folder
    toon: str  # the blended teacher (targets)
    base: str | None = None  # the base generator (inputs and mapping); needed for z pairs
    count: int | None = None  # pairs (z: required; projected: default all rows)
    seed: int = 0  # pair k uses seed + k
    truncation_psi: float | None = None  # --trunc: truncation psi of z pairs (default 0.7)
    truncation_cutoff: int | None = None  # --trunc-cutoff: truncate only the first N ws
    noise: str = "const"  # const | random | none
    size: int | None = None  # output resolution (default the generator's)
    shard_size: int | None = None  # pairs per shard (default 1000, or from num_shards)
    num_shards: int | None = None  # alternatively: the number of shards
    batch: int = DEFAULT_BATCH  # render batch (fixed batches: part of the config)
    precision: str = "auto"  # fp32 | fp16 | auto (an existing job's, else fp16 on CUDA)
    mix_prob: float = 0.0  # probability of style mixing per z pair
    perturb_std: float = 0.0  # std of Gaussian noise added to ws of z pairs
    png_level: int = shards.DEFAULT_PNG_LEVEL  # Pillow PNG compress_level
    latents: str | None = None  # projected_w.npz (real-photo pairs)
    photos: str | None = None  # folder of aligned photos for --latents or --encoder
    encoder: str | None = None  # inversion encoder: real-photo pairs without projection
    target: str = "render"  # real-photo pairs: render (toon(ws)) | delta (photo + toon - base)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | None = None  # PNG encoding processes (0: inline; default cores - 1, <= 16)
    threads: int | None = None  # torch CPU threads while rendering (default: torch's)
    shard_index: tuple[int, ...] | None = None  # shards this process writes (default all)
    task: tuple[int, int] | None = None  # (I, T): shards i with i % T == I
    use_slurm: bool = True  # take (I, T) from a Slurm array's environment when set


@dataclass
class Job:
    """A resolved job: loaded teachers, inputs and the static manifest (see :func:`prepare_job`)."""

    config: GenerateConfig
    manifest: dict[str, Any]
    device: torch.device
    toon: Generator
    base: Generator | None = None
    ws_rows: np.ndarray | None = None  # projected latents [rows, num_ws, w_dim]
    photo_paths: list[str] | None = None  # absolute paths, one per row
    photo_names: list[str] | None = None  # names relative to the photo folder
    encoder: torch.nn.Module | None = None  # encoded pairs: photos -> ws
    _cache: dict[int, RenderedBatch] = field(default_factory=dict, repr=False)

    @property
    def settings(self) -> dict[str, Any]:
        """The generating config (the manifest's ``config``)."""
        return self.manifest["config"]

    @property
    def count(self) -> int:
        """Pairs in the dataset."""
        return int(self.manifest["count"])

    @property
    def shard_size(self) -> int:
        """Pairs per shard (the last may hold fewer)."""
        return int(self.manifest["shard_size"])

    @property
    def num_shards(self) -> int:
        """Shards in the dataset."""
        return int(self.manifest["num_shards"])

    @property
    def resolution(self) -> int:
        """Output side in pixels."""
        return int(self.manifest["resolution"])


def _load(path: str, role: str, device: torch.device) -> tuple[Generator, dict[str, str]]:
    try:
        G = load_generator(path)
    except CheckpointError as e:
        raise PairsError(f"--{role}: {e}") from None
    if G.c_dim > 0:
        raise PairsError(f"--{role} {path}: conditional generators are not supported")
    G = G.to(device).eval().requires_grad_(False)
    return G, {"file": Path(path).name, "sha256": file_sha256(path)}


def _layout(cfg: GenerateConfig, count: int) -> tuple[int, int]:
    if cfg.shard_size is not None and cfg.shard_size < 1:
        raise PairsError(f"--shard-size must be at least 1, got {cfg.shard_size}")
    if cfg.num_shards is None:
        size = cfg.shard_size or DEFAULT_SHARD_SIZE
        return size, shards.num_shards_for(count, size)
    if not 1 <= cfg.num_shards <= count:
        raise PairsError(
            f"--num-shards must be from 1 to the count ({count}), got {cfg.num_shards}"
        )
    size = cfg.shard_size or -(-count // cfg.num_shards)
    if shards.num_shards_for(count, size) != cfg.num_shards:
        raise PairsError(
            f"{count} pairs in shards of {size} make {shards.num_shards_for(count, size)} shards, "
            f"not --num-shards {cfg.num_shards}; give one of --shard-size and --num-shards"
        )
    return size, cfg.num_shards


def _match_photos(names: Sequence[str] | None, folder: Path, rows: int) -> list[str]:
    files = list_photos(folder)
    if names is None:
        if len(files) != rows:
            raise PairsError(
                f"{folder} holds {len(files)} photos for {rows} latents; save the latents with "
                "names (teacher project does) or give exactly one photo per row, in name order"
            )
        return files
    index: dict[str, list[str]] = defaultdict(list)
    for f in files:
        p = Path(f)
        for alias in {f, p.with_suffix("").as_posix(), p.stem}:
            index[alias].append(f)
    matched = []
    for i, name in enumerate(names):
        for alias in (name, Path(name).with_suffix("").as_posix(), f"{Path(name).stem}_target"):
            hits = index.get(alias, [])
            if len(hits) == 1:
                matched.append(hits[0])
                break
            if len(hits) > 1:
                raise PairsError(f"latent row {i} ({name}): several photos match in {folder}")
        else:
            raise PairsError(f"latent row {i} ({name}): no photo of that name in {folder}")
    return matched


def _load_latents(cfg: GenerateConfig, toon: Generator) -> tuple[np.ndarray, list[str], dict]:
    path = Path(cfg.latents or "")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "w" not in npz:
                raise PairsError(
                    f"{path}: no key 'w' (expected projected_w.npz from teacher project)"
                )
            w = np.asarray(npz["w"], dtype=np.float32)
            names = [str(n) for n in npz["names"]] if "names" in npz else None
    except (OSError, ValueError) as e:
        raise PairsError(f"{path}: cannot read latents ({e})") from None
    if w.ndim == 2:
        w = np.repeat(w[:, None, :], toon.num_ws, axis=1)
    if w.ndim != 3 or w.shape[1:] != (toon.num_ws, toon.w_dim):
        raise PairsError(
            f"{path}: w has shape {w.shape}, expected [N, {toon.num_ws}, {toon.w_dim}] for --toon"
        )
    if names is not None and len(names) != len(w):
        raise PairsError(f"{path}: {len(names)} names for {len(w)} latents")
    info = {"file": path.name, "sha256": file_sha256(path), "rows": int(len(w))}
    return w, names, info


def _load_encoder(path: str, toon: Generator, device: torch.device):
    from teacher.encoder import check_pair, load_encoder

    try:
        E = load_encoder(path)
        # Shapes only: the toon is a blend of the encoder's base, so its file hash differs.
        check_pair(E, toon)
    except CheckpointError as e:
        raise PairsError(f"--encoder: {e}") from None
    info = {"file": Path(path).name, "sha256": file_sha256(path)}
    return E.to(device), info


def _existing_precision(out: Path) -> str | None:
    try:
        return shards.read_manifest(out)["config"].get("precision")
    except (PairsError, KeyError, TypeError):
        return None


def prepare_job(cfg: GenerateConfig) -> Job:
    """Check the config, load the teachers and inputs, resolve defaults; returns the job with
    its static manifest (raises PairsError with a one-line message on any problem)."""
    if cfg.noise not in NOISE_MODES:
        raise PairsError(f"--noise must be one of {', '.join(NOISE_MODES)}, got {cfg.noise!r}")
    if cfg.precision not in PRECISIONS:
        raise PairsError(f"--precision must be one of {', '.join(PRECISIONS)}")
    if cfg.batch < 1:
        raise PairsError(f"--batch must be at least 1, got {cfg.batch}")
    if not 0 <= cfg.png_level <= 9:
        raise PairsError(f"--png-level must be from 0 to 9, got {cfg.png_level}")
    if not 0.0 <= cfg.mix_prob <= 1.0 or cfg.perturb_std < 0:
        raise PairsError("--mix-prob must be in [0, 1] and --perturb-std at least 0")
    if cfg.seed < 0:
        raise PairsError(f"--seed must be at least 0, got {cfg.seed}")
    encoded = cfg.encoder is not None
    if encoded and cfg.latents is not None:
        raise PairsError(
            "give --latents (projected codes) or --encoder (codes made here), not both"
        )
    projected = cfg.latents is not None or encoded
    if projected != (cfg.photos is not None):
        raise PairsError(
            "real-photo pairs need --photos DIR and either --latents projected_w.npz or "
            "--encoder FILE"
        )
    if projected and (cfg.truncation_psi is not None or cfg.truncation_cutoff is not None):
        raise PairsError("--trunc and --trunc-cutoff apply to z pairs, not to real-photo pairs")
    if projected and (cfg.mix_prob > 0 or cfg.perturb_std > 0):
        raise PairsError("--mix-prob and --perturb-std apply to z pairs, not to real-photo pairs")
    if cfg.target not in TARGETS:
        raise PairsError(f"--target must be one of {', '.join(TARGETS)}, got {cfg.target}")
    if cfg.target == "delta" and not projected:
        raise PairsError(
            "--target delta applies to real-photo pairs (--photos with --latents or --encoder); "
            "a z pair's input is the base's render, so its target is already the toon render"
        )
    if cfg.target == "delta" and cfg.base is None:
        raise PairsError(
            "--target delta needs --base: the teacher's change is toon(w) - base(w) for the "
            "photo's code w"
        )
    if not projected and cfg.base is None:
        raise PairsError("z pairs need --base (the generator that renders the inputs)")
    if not projected and cfg.count is None:
        raise PairsError("z pairs need --count")
    if cfg.count is not None and cfg.count < 1:
        raise PairsError(f"--count must be at least 1, got {cfg.count}")

    device = pick_device(cfg.device)
    toon, toon_info = _load(cfg.toon, "toon", device)
    base, base_info = _load(cfg.base, "base", device) if cfg.base else (None, None)
    if base is not None:
        mine = (base.img_resolution, base.num_ws, base.w_dim)
        theirs = (toon.img_resolution, toon.num_ws, toon.w_dim)
        if mine != theirs:
            raise PairsError(
                f"--base and --toon differ in (resolution, num_ws, w_dim): {mine} vs {theirs}"
            )
        if cfg.noise == "random":
            a = [m.resolution for m in noise_layers(base)]
            if a != [m.resolution for m in noise_layers(toon)]:
                raise PairsError("--noise random needs the same noise layers in --base and --toon")
    psi = (
        None
        if projected
        else (DEFAULT_TRUNCATION if cfg.truncation_psi is None else cfg.truncation_psi)
    )
    if cfg.truncation_cutoff is not None and not 1 <= cfg.truncation_cutoff <= toon.num_ws:
        raise PairsError(f"--trunc-cutoff must be from 1 to {toon.num_ws}")

    ws_rows = photo_paths = photo_names = None
    latents_info = photos_info = encoder_info = None
    encoder = None
    if encoded:
        encoder, encoder_info = _load_encoder(cfg.encoder or "", toon, device)
        if encoder.passes > 1 and base is None:
            raise PairsError(
                f"--encoder {Path(cfg.encoder or '').name} corrects its codes over "
                f"{encoder.passes} passes from renders of the generator it codes: give that "
                "generator as --base"
            )
        folder = Path(cfg.photos or "")
        photo_names = list_photos(folder)
        if not photo_names:
            raise PairsError(f"{folder}: no photos found")
        count = cfg.count or len(photo_names)
        if count > len(photo_names):
            raise PairsError(f"--count {count} exceeds the {len(photo_names)} photos in {folder}")
        photo_names = photo_names[:count]
    elif projected:
        ws_rows, names, latents_info = _load_latents(cfg, toon)
        folder = Path(cfg.photos or "")
        photo_names = _match_photos(names, folder, len(ws_rows))
        count = cfg.count or len(ws_rows)
        if count > len(ws_rows):
            raise PairsError(f"--count {count} exceeds the {len(ws_rows)} latents")
        ws_rows, photo_names = ws_rows[:count], photo_names[:count]
    if projected:
        photo_paths = [str((folder / n).resolve()) for n in photo_names]
        digest = shards.config_sha256(
            [[n, file_sha256(p)] for n, p in zip(photo_names, photo_paths, strict=True)]
        )
        photos_info = {"folder": folder.resolve().name, "count": count, "sha256": digest}
    else:
        count = int(cfg.count or 0)
    batches = -(-count // cfg.batch)
    if cfg.seed + batches * cfg.batch > 2**32:
        raise PairsError(f"--seed {cfg.seed} + the padded count exceeds 2**32")
    shard_size, num_shards = _layout(cfg, count)
    resolution = cfg.size or toon.img_resolution
    if resolution < 1:
        raise PairsError(f"--size must be positive, got {resolution}")
    precision = cfg.precision
    if precision == "auto":
        precision = _existing_precision(Path(cfg.out)) or (
            "fp16" if device.type == "cuda" else "fp32"
        )

    settings = {
        "pair_recipe": PAIR_RECIPE,
        "latent_kind": "encoded" if encoded else "projected" if projected else "z",
        "count": count,
        "seed": cfg.seed,
        "truncation_psi": psi,
        "truncation_cutoff": cfg.truncation_cutoff,
        "noise_mode": cfg.noise,
        "resolution": resolution,
        "shard_size": shard_size,
        "batch": cfg.batch,
        "precision": precision,
        "mix_prob": cfg.mix_prob,
        "perturb_std": cfg.perturb_std,
        "png_compress_level": cfg.png_level,
        "base": base_info,
        "toon": toon_info,
        "latents": latents_info,
        "photos": photos_info,
    }
    if encoded:  # (absent otherwise, so older manifests keep their hash)
        settings["encoder"] = encoder_info
    if cfg.target != "render":  # likewise
        settings["target"] = cfg.target
    manifest = {
        "format": shards.FORMAT,
        "format_version": shards.FORMAT_VERSION,
        "resolution": resolution,
        "count": count,
        "shard_size": shard_size,
        "num_shards": num_shards,
        "config": settings,
        "config_sha256": shards.config_sha256(settings),
        "teachers": {"base": base_info, "toon": toon_info},
    }
    return Job(cfg, manifest, device, toon, base, ws_rows, photo_paths, photo_names, encoder)


def describe(job: Job) -> dict[str, Any]:
    """The resolved job for ``--dry-run``: the static manifest, the shard selection and how it
    runs."""
    cfg = job.config
    selected, how = select_shards(
        job.num_shards, cfg.shard_index, cfg.task, use_slurm=cfg.use_slurm
    )
    return {
        "manifest": job.manifest,
        "out": cfg.out,
        "device": str(job.device),
        "workers": default_workers() if cfg.workers is None else cfg.workers,
        "shards": how,
        "request": asdict(cfg),
    }

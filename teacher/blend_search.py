"""Choosing the blend level and direction by measurement (``toon-teacher blend-search``).

Every swap level R in {0, 4, 8, ..., resolution} is scored in both directions:

- ``structure-from-base``: ``--low base --high toon`` (coarse blocks from the base, fine blocks
  from the fine-tuned model; what the README recipe and the demo use);
- ``structure-from-toon``: ``--low toon --high base`` (the published toonify way: the fine-tuned
  model's coarse structure, the base's fine rendering).

With the hard switch the endpoints coincide: R = 0 of one direction and R = resolution of the
other are the same parent. Such rows are flagged (``same_as``), computed once and count once in
the recommendation.

Every level is scored at each smooth switch width of ``widths`` (``--smooth 0,0.5,1``; 0 is the
hard switch). With ``--photos DIR --encoder FILE`` the blends are scored on real photos instead of
seed renders: photo k's code w (the encoder's, its passes rendered by the base) gives the *delta
image* ``photo + G(w) - base(w)`` of each generator G, and the base's image is the photo itself;
style and identity below are then measured on those images (what ``toon-pairs generate --target
delta`` makes its targets of).

All renders use the same ws: ``z`` of seed k (:func:`teacher.sample.seed_latent`) through the
mapping of ``mapping_from`` (the base by default, as ``toon-pairs generate`` maps its latents)
with truncation ``truncation_psi``; noise ``const``; renders are quantised to uint8 like saved
images.

**Style**: KID (unbiased, :func:`teacher.metrics.compute_kid`) between the features of the
blend's renders and of the game set, with a feature network that is not the model's own
discriminator (that would be circular). ``style_norm = (KID - KID_toon) / (KID_base - KID_toon)``:
0 is as close to the game set as the fine-tuned model's own renders, 1 as far as the base's.

**Identity**: per seed, the distance between the base's render and the blend's render of the
same w: dlib's face descriptor (renders smaller than :data:`DLIB_MIN_SIZE` are upsampled to it
first; dlib's HOG detector and 150 px face chips need faces of a reasonable size) or the L2
distance between the embeddings of a user TorchScript net. ``share_changed`` is the share of
seeds whose distance is above the same-person threshold (dlib: 0.6).

**Recommendation** (:func:`recommend`): a row keeps identity when ``share_changed <=
max_changed``. Among the rows that keep identity, except those equal to the base (not a
toonifier), the lowest KID wins (ties: lower mean identity distance, then structure-from-base,
then the narrower width, then the lower level). The alternatives are the next rows in that
order. With no row keeping identity there is no recommendation; the rows that change the fewest
faces are shown instead.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from common.cli import ToonError
from common.files import atomic_write_text, file_sha256
from common.images import save_png
from teacher.blend import blend_generators, check_same_arch, draw_header, high_share
from teacher.dataset import ImageDataset
from teacher.metrics import FeatureNet, compute_kid
from teacher.networks import Generator
from teacher.sample import seed_latent

# direction -> (parent for blocks <= R (--low), parent for blocks above R (--high))
DIRECTIONS: dict[str, tuple[str, str]] = {
    "structure-from-base": ("base", "toon"),
    "structure-from-toon": ("toon", "base"),
}
PARENTS = ("base", "toon")
DLIB_THRESHOLD = 0.6  # dlib's same-person threshold (teacher.identity.SAME_PERSON_THRESHOLD)
DLIB_MIN_SIZE = 150  # renders are upsampled to at least this size before dlib describes them
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000

Features = Callable[[torch.Tensor], np.ndarray]  # uint8 [N, C, H, W] -> float [N, F]


class BlendSearchError(ToonError):
    """A blend-search input is missing or unusable (one-line message)."""


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one search (the CLI flags map one to one)."""

    seeds: tuple[int, ...] = tuple(range(64))  # one render per seed and level
    truncation_psi: float = 0.7  # as toon-pairs generate's default
    mapping_from: str = "base"  # "base" or "toon": whose mapping network and w_avg
    widths: tuple[float, ...] = (0.0,)  # smooth switch widths in octaves searched; 0 = hard
    identity_threshold: float = DLIB_THRESHOLD  # distance above which a face counts as changed
    max_changed: float = 0.2  # a row keeps identity when at most this share of faces changed
    alternatives: int = 3  # runner-ups shown beside the recommendation
    grid_seeds: int = 6  # rows of the render grids
    batch: int = 8  # renders per forward pass


@dataclass
class LevelScore:
    """One row of the table: a direction and a swap level R."""

    direction: str
    level: int
    width: float  # smooth switch width in octaves (0: hard)
    low: str  # parent of blocks <= R
    high: str  # parent of blocks above R
    same_as: str | None  # "base" / "toon" when the blend equals that parent exactly
    kid: float
    style_norm: float | None
    identity_mean: float
    identity_norm: float | None  # identity_mean / the fine-tuned model's identity_mean
    share_changed: float
    keeps_identity: bool = False
    distances: list[float] = field(default_factory=list, repr=False)


# ---------------------------------------------------------------------------------------------
# Levels and blends


def search_levels(resolution: int) -> list[int]:
    """Every swap level: ``[0, 4, 8, ..., resolution]``."""
    return [0] + [2**k for k in range(2, int(math.log2(resolution)) + 1)]


def same_parent(level: int, resolution: int, width: float) -> str | None:
    """``"low"`` or ``"high"`` when the blend at ``level`` equals that parent's synthesis
    exactly (every block's high share is 0 or every one is 1), else None."""
    shares = {high_share(2**k, level, width) for k in range(2, int(math.log2(resolution)) + 1)}
    if shares == {0.0}:
        return "low"
    if shares == {1.0}:
        return "high"
    return None


def mapping_side(direction: str, mapping_from: str) -> str:
    """``blend --mapping-from`` value (low/high) that takes the mapping from ``mapping_from``."""
    if mapping_from not in PARENTS:
        raise ValueError(f"mapping_from must be 'base' or 'toon', got {mapping_from!r}")
    return "low" if DIRECTIONS[direction][0] == mapping_from else "high"


def direction_blends(
    base: Generator, toon: Generator, direction: str, level: int, width: float, mapping_from: str
) -> Generator:
    """The generator ``toon-teacher blend`` writes for this direction and level."""
    parents = {"base": base, "toon": toon}
    low, high = DIRECTIONS[direction]
    side = mapping_side(direction, mapping_from)
    return blend_generators(parents[low], parents[high], level, width=width, mapping_from=side)


# ---------------------------------------------------------------------------------------------
# Feature networks


def load_torchscript(
    path: str | os.PathLike | None, flag: str, what: str
) -> torch.jit.ScriptModule:
    """Load a TorchScript module or raise a one-line :class:`BlendSearchError`."""
    if path is None or not Path(path).is_file():
        shown = "no path given" if path is None else f"{path} not found"
        raise BlendSearchError(
            f"{flag}: {shown}; pass a TorchScript file ({what}; called as net(x), x float32 "
            "[N, 3, H, W] in [-1, 1]) saved with torch.jit.save; nothing is downloaded"
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # any failure to read the file is the user's to fix
        raise BlendSearchError(
            f"{path}: not a loadable TorchScript module ({type(e).__name__}); pass {flag} a file "
            "saved with torch.jit.save"
        ) from e


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> float32 ``[N, 3, H, W]`` in [-1, 1] (``x / 127.5 - 1``; one
    channel repeated to three)."""
    x = images.to(torch.float32) / 127.5 - 1
    return x.repeat([1, 3, 1, 1]) if x.shape[1] == 1 else x


def torchscript_features(net: torch.jit.ScriptModule, device: torch.device, name: str) -> Features:
    """Features from a user TorchScript net: ``net(x)`` on :func:`to_unit_range` images."""
    net = net.to(device)

    @torch.no_grad()
    def features(images: torch.Tensor) -> np.ndarray:
        out = net(to_unit_range(images).to(device))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise BlendSearchError(f"{name}: expected [N, F] features, got {shape}")
        return out.detach().to(torch.float64).cpu().numpy()

    return features


def inception_features(path: str | os.PathLike, device: torch.device) -> Features:
    """NVIDIA's Inception pool features (:class:`teacher.metrics.FeatureNet`)."""
    net = FeatureNet(path, kind="inception", device=device)
    return lambda images: net(images).to(torch.float64).cpu().numpy()


def dlib_features(images: torch.Tensor) -> np.ndarray:
    """dlib face descriptors ``[N, 128]``; images smaller than :data:`DLIB_MIN_SIZE` are
    upsampled to it (bicubic) first."""
    from teacher.identity import face_descriptor

    out = []
    for img in images.permute(0, 2, 3, 1).cpu().numpy():
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        if img.shape[0] < DLIB_MIN_SIZE:
            size = (DLIB_MIN_SIZE, DLIB_MIN_SIZE)
            img = np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))
        out.append(face_descriptor(img))
    return np.stack(out)


def batched(features: Features, images: torch.Tensor, batch: int) -> np.ndarray:
    """``features`` over ``images`` in chunks of ``batch``."""
    return np.concatenate([features(images[i : i + batch]) for i in range(0, len(images), batch)])


def dataset_features(
    path: str | os.PathLike, features: Features, resolution: int, channels: int, batch: int
) -> np.ndarray:
    """Features of every image of a game set (folder or zip, as ``finetune`` reads it)."""
    ds = ImageDataset(path, resolution=resolution, channels=channels)
    if len(ds) < 2:
        raise BlendSearchError(f"{path}: KID needs at least 2 game images, found {len(ds)}")
    parts = []
    for i in range(0, len(ds), batch):
        images = np.stack([ds[j][0] for j in range(i, min(i + batch, len(ds)))])
        parts.append(features(torch.from_numpy(images)))
    return np.concatenate(parts)


# ---------------------------------------------------------------------------------------------
# Rendering and scoring


@torch.no_grad()
def seed_ws(G: Generator, seeds: Sequence[int], truncation_psi: float) -> torch.Tensor:
    """``ws [N, num_ws, w_dim]`` of the seeds through ``G``'s mapping (on ``G``'s device)."""
    if G.c_dim > 0:
        raise ValueError("blend-search supports unconditional generators only")
    device = next(G.parameters()).device
    z = torch.from_numpy(np.stack([seed_latent(s, G.z_dim) for s in seeds])).to(device)
    return G.mapping(z, None, truncation_psi=truncation_psi)


@torch.no_grad()
def render_uint8(G: Generator, ws: torch.Tensor, batch: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` renders (CPU) of ``ws``: :func:`render_float` quantised like a
    saved image (``x * 127.5 + 128``)."""
    return (render_float(G, ws, batch) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def render_float(G: Generator, ws: torch.Tensor, batch: int) -> torch.Tensor:
    """float ``[N, C, H, W]`` renders in [-1, 1] (CPU) of ``ws`` (noise ``const``; float32 off
    CUDA)."""
    fp32 = ws.device.type != "cuda"
    parts = [
        G.synthesis(ws[i : i + batch], noise_mode="const", force_fp32=fp32).float().cpu()
        for i in range(0, len(ws), batch)
    ]
    return torch.cat(parts)


def normalised(value: float, at_zero: float, at_one: float) -> float | None:
    """``(value - at_zero) / (at_one - at_zero)``; None when the references coincide."""
    span = at_one - at_zero
    return None if span == 0 or not math.isfinite(span) else (value - at_zero) / span


@torch.no_grad()
def search(
    base: Generator,
    toon: Generator,
    game_features: np.ndarray,
    style: Features,
    identity: Features,
    cfg: SearchConfig,
    log: Callable[[str], None] = lambda msg: None,
    photos: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[list[LevelScore], dict[str, np.ndarray]]:
    """Score every level in both directions, at every width of ``cfg.widths``.

    Without ``photos`` a generator is scored on its renders of the seeds' ws. With ``photos``
    = (uint8 photos ``[N, C, H, W]`` at the generator's resolution, their W+ codes ``[N,
    num_ws, w_dim]`` in the base), a generator G is scored on the *delta images* ``photo +
    G(w) - base(w)`` (what ``toon-pairs generate --target delta`` makes its targets of; the
    base's are the photos themselves), so style and identity are measured on what the student
    will learn to output, on real photos.

    Returns the rows (direction by direction, width by width, levels ascending) and one grid per
    direction and width (:func:`level_grid`: the first ``cfg.grid_seeds`` faces at every level).
    """
    check_same_arch(base, toon)
    if cfg.mapping_from not in PARENTS:
        raise ValueError(f"mapping_from must be 'base' or 'toon', got {cfg.mapping_from!r}")
    if len(cfg.seeds) < 2:
        raise ValueError("KID needs at least 2 seeds")
    parents = {"base": base, "toon": toon}
    if photos is None:
        ws = seed_ws(parents[cfg.mapping_from], cfg.seeds, cfg.truncation_psi)
    else:
        ws = photos[1].to(next(base.parameters()).device)
    res = base.img_resolution
    levels = search_levels(res)

    def kid(renders: torch.Tensor) -> float:
        feats = batched(style, renders, cfg.batch)
        return compute_kid(game_features, feats, KID_SUBSETS, KID_MAX_SUBSET, seed=0)

    # Per unique generator: renders' KID, identity distances, grid rows.
    measured: dict[Any, tuple[float, np.ndarray, torch.Tensor]] = {}
    if photos is None:
        base_renders = render_uint8(base, ws, cfg.batch)
    else:
        base_float = render_float(base, ws, cfg.batch)
        base_renders = photos[0]
    base_ids = batched(identity, base_renders, cfg.batch)
    log("scoring the base")
    measured["base"] = (kid(base_renders), np.zeros(len(ws)), base_renders[: cfg.grid_seeds])

    def measure(key: Any, G: Generator) -> None:
        if photos is None:
            renders = render_uint8(G, ws, cfg.batch)
        else:  # photo + G(w) - base(w), quantised like a saved image
            change = render_float(G, ws, cfg.batch) - base_float
            renders = (base_renders.float() + change * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
        ids = batched(identity, renders, cfg.batch)
        dist = np.linalg.norm(ids - base_ids, axis=1)
        measured[key] = (kid(renders), dist, renders[: cfg.grid_seeds])

    log("scoring the fine-tuned model")
    measure("toon", toon)
    kid_base, kid_toon = measured["base"][0], measured["toon"][0]
    toon_identity = float(measured["toon"][1].mean())

    rows: list[LevelScore] = []
    grids: dict[str, np.ndarray] = {}
    for direction, (low, high) in DIRECTIONS.items():
        for width in cfg.widths:
            cells, labels = [], []
            for level in levels:
                side = same_parent(level, res, width)
                same = {"low": low, "high": high}.get(side) if side else None
                key = same if same else (direction, level, width)
                if key not in measured:
                    log(f"scoring {direction} R={level}" + (f" smooth {width:g}" if width else ""))
                    G = direction_blends(base, toon, direction, level, width, cfg.mapping_from)
                    measure(key, G)
                k, dist, grid_rows = measured[key]
                ident = float(dist.mean())
                rows.append(
                    LevelScore(
                        direction=direction,
                        level=level,
                        width=width,
                        low=low,
                        high=high,
                        same_as=same,
                        kid=k,
                        style_norm=normalised(k, kid_toon, kid_base),
                        identity_mean=ident,
                        identity_norm=normalised(ident, 0.0, toon_identity),
                        share_changed=float((dist > cfg.identity_threshold).mean()),
                        keeps_identity=bool(
                            (dist > cfg.identity_threshold).mean() <= cfg.max_changed
                        ),
                        distances=[float(d) for d in dist],
                    )
                )
                cells.append(grid_rows)
                labels.append(f"R={level}" + (f" ={same}" if same else ""))
            name = direction if len(cfg.widths) == 1 else f"{direction}_smooth{width:g}"
            grids[name] = level_grid(cells, labels, res)
    return rows, grids


# ---------------------------------------------------------------------------------------------
# The rule


def rank_key(row: LevelScore) -> tuple:
    """Order of preference among rows that keep identity (see the module docstring)."""
    return (
        row.kid, row.identity_mean, list(DIRECTIONS).index(row.direction), row.width, row.level
    )  # fmt: skip


def candidates(rows: Sequence[LevelScore]) -> list[LevelScore]:
    """Rows that may be recommended: not equal to the base, each exact parent counted once."""
    out, seen = [], set()
    for row in rows:
        if row.same_as == "base" or (row.same_as is not None and row.same_as in seen):
            continue
        if row.same_as is not None:
            seen.add(row.same_as)
        out.append(row)
    return out


def recommend(
    rows: Sequence[LevelScore], alternatives: int = 3
) -> tuple[LevelScore | None, list[LevelScore]]:
    """The recommended row (None when no candidate keeps identity) and the alternatives.

    Among :func:`candidates` that keep identity, the first by :func:`rank_key` is recommended and
    the next ``alternatives`` follow. With none keeping identity, the alternatives are the
    ``alternatives`` candidates with the lowest ``share_changed`` (then by :func:`rank_key`).
    """
    cands = candidates(rows)
    keep = sorted((r for r in cands if r.keeps_identity), key=rank_key)
    if keep:
        return keep[0], keep[1 : 1 + alternatives]
    return None, sorted(cands, key=lambda r: (r.share_changed, *rank_key(r)))[:alternatives]


def blend_command(row: LevelScore, base: str, toon: str, cfg: SearchConfig, out: str) -> str:
    """The ``toon-teacher blend`` command line that writes this row's blend."""
    files = {"base": base, "toon": toon}
    smooth = f" --smooth {row.width:g}" if row.width else ""
    return (
        f"toon-teacher blend --low {files[row.low]} --high {files[row.high]} "
        f"--swap-res {row.level} --mapping-from {mapping_side(row.direction, cfg.mapping_from)}"
        f"{smooth} --out {out}"
    )


# ---------------------------------------------------------------------------------------------
# Output: table, grid, plot, report


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(rows: Sequence[LevelScore], best: LevelScore | None) -> str:
    """A markdown table of every row (``*`` marks the recommendation)."""
    lines = [
        "| direction | R | smooth | same as | style KID | style (0=toon, 1=base) | "
        "identity distance | share changed | keeps identity |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        mark = " *" if r is best else ""
        lines.append(
            f"| {r.direction}{mark} | {r.level} | {r.width:g} | {r.same_as or ''} | {r.kid:.5f} | "
            f"{_fmt(r.style_norm, '.2f')} | {r.identity_mean:.3f} | {r.share_changed:.2f} | "
            f"{'yes' if r.keeps_identity else 'no'} |"
        )
    return "\n".join(lines)


def level_grid(cells: Sequence[torch.Tensor], labels: Sequence[str], cell: int) -> np.ndarray:
    """HWC uint8 grid: a label row, then one row per seed and one column per level."""
    cols = [c.permute(0, 2, 3, 1).numpy() for c in cells]
    body = np.concatenate([np.concatenate(list(col), axis=0) for col in cols], axis=1)
    channels = body.shape[2]
    header = draw_header(labels, cell, max(16, cell // 8), channels)
    return np.concatenate([header, body], axis=0)


COLOURS = {"structure-from-base": (31, 119, 180), "structure-from-toon": (214, 39, 40)}


def draw_plot(
    rows: Sequence[LevelScore], best: LevelScore | None, threshold_note: str, size=(760, 560)
) -> Image.Image:
    """Style (x: normalised KID, or KID when it cannot be normalised) against identity (y: mean
    distance to the base's render); one line per direction, points labelled with R, filled
    when the row keeps identity; the recommendation ringed."""
    w, h = size
    left, right, top, bottom = 80, 20, 50, 80
    use_norm = all(r.style_norm is not None for r in rows)
    xs = [r.style_norm if use_norm else r.kid for r in rows]
    ys = [r.identity_mean for r in rows]
    x0, x1 = min(xs + [0.0]), max(xs + ([1.0] if use_norm else []))
    y0, y1 = 0.0, max(ys + [1e-6]) * 1.1
    x0, x1 = (x0 - 0.05 * (x1 - x0 or 1), x1 + 0.05 * (x1 - x0 or 1))

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom),
        )

    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=12)
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        tx = x0 + (x1 - x0) * i / 5
        ty = y0 + (y1 - y0) * i / 5
        gx, _ = px(tx, y0)
        _, gy = px(x0, ty)
        d.line([gx, h - bottom, gx, h - bottom + 4], fill="black")
        d.text((gx, h - bottom + 6), f"{tx:.3g}", fill="black", font=font, anchor="mt")
        d.line([left - 4, gy, left, gy], fill="black")
        d.text((left - 6, gy), f"{ty:.3g}", fill="black", font=font, anchor="rm")
    xlabel = "style: KID to the game set" + (" (0 = fine-tuned, 1 = base)" if use_norm else "")
    d.text(((left + w - right) / 2, h - bottom + 32), xlabel, fill="black", font=font, anchor="mm")
    d.text((10, top - 30), "identity: mean distance to the base's render", fill="black", font=font)
    d.text((w - right, top - 30), threshold_note, fill="black", font=font, anchor="ra")
    widths = sorted({r.width for r in rows})
    for n, (direction, colour) in enumerate(COLOURS.items()):
        for width in widths:  # one line per direction and width (lighter: smoother)
            pts = [
                (px(x, y), r)
                for x, y, r in zip(xs, ys, rows, strict=True)
                if r.direction == direction and r.width == width
            ]
            shade = widths.index(width) / max(len(widths), 2)
            c = tuple(round(v + (255 - v) * shade) for v in colour)
            d.line([p for p, _ in pts], fill=c, width=2)
            for (x, y), r in pts:
                box = [x - 4, y - 4, x + 4, y + 4]
                d.ellipse(box, outline=c, fill=c if r.keeps_identity else "white", width=2)
                dy = -12 if n == 0 else 12
                label = str(r.level) + (f"~{r.width:g}" if r.width else "")
                d.text((x, y + dy), label, fill=c, font=font, anchor="mm")
                if r is best:
                    d.ellipse([x - 9, y - 9, x + 9, y + 9], outline="black", width=2)
        lx = left + 260 * n
        d.line([lx, h - 14, lx + 24, h - 14], fill=colour, width=2)
        key = direction + (" (R~smooth)" if len(widths) > 1 else "")
        d.text((lx + 30, h - 14), key, fill=colour, font=font, anchor="lm")
    return img


def row_json(row: LevelScore) -> dict[str, Any]:
    return asdict(row)


def write_outputs(
    out: str | os.PathLike,
    report: dict[str, Any],
    table: str,
    plot: Image.Image,
    grids: dict[str, np.ndarray],
) -> list[Path]:
    """report.json, table.md, plot.png and grid_<direction>.png under ``out`` (atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n"),
        atomic_write_text(out / "table.md", table + "\n"),
        save_png(np.asarray(plot), out / "plot.png"),
    ]
    paths += [save_png(g, out / f"grid_{d}.png") for d, g in grids.items()]
    return paths


def build_report(
    rows: Sequence[LevelScore],
    best: LevelScore | None,
    alternatives: Sequence[LevelScore],
    cfg: SearchConfig,
    inputs: dict[str, Any],
    base_path: str,
    toon_path: str,
) -> dict[str, Any]:
    """The JSON report: settings, inputs, every row, the recommendation and the alternatives."""

    def pick(r: LevelScore) -> dict[str, Any]:
        return {
            "direction": r.direction,
            "level": r.level,
            "width": r.width,
            "same_as": r.same_as,
            "kid": r.kid,
            "style_norm": r.style_norm,
            "identity_mean": r.identity_mean,
            "share_changed": r.share_changed,
            "keeps_identity": r.keeps_identity,
            "blend_command": blend_command(r, base_path, toon_path, cfg, "blended.safetensors"),
        }

    settings = asdict(cfg)
    settings["seeds"] = list(cfg.seeds)
    settings["widths"] = list(cfg.widths)
    return {
        "settings": settings,
        "inputs": inputs,
        "rule": RULE,
        "rows": [row_json(r) for r in rows],
        "recommendation": pick(best) if best else None,
        "alternatives": [pick(r) for r in alternatives],
    }


RULE = (
    "a row keeps identity when its share of seeds whose identity distance (base render vs blend "
    "render of the same w; with photos: photo vs photo + blend(w) - base(w)) exceeds the "
    "threshold is at most max_changed; among rows that keep "
    "identity, not equal to the base, each parent counted once, the lowest style KID wins (ties: "
    "lower mean identity distance, then structure-from-base, then the narrower width, then the "
    "lower level)"
)


def describe_inputs(**files: str | os.PathLike | None) -> dict[str, Any]:
    """File name and sha256 of each given input file (folders: just the name)."""
    out: dict[str, Any] = {}
    for key, path in files.items():
        if path is None:
            continue
        p = Path(path)
        out[key] = {"file": p.name, "sha256": file_sha256(p) if p.is_file() else None}
    return out


def dlib_available() -> None:
    """Raise a one-line error now (before rendering) when dlib's models cannot be loaded."""
    from teacher.identity import _models

    try:
        _models()
    except ImportError as e:
        raise BlendSearchError(
            f"dlib is not importable ({e}); install dlib or pass --identity-net FILE"
        ) from None


def run_search(
    base_path: str | os.PathLike,
    toon_path: str | os.PathLike,
    data: str | os.PathLike,
    cfg: SearchConfig,
    out: str | os.PathLike,
    *,
    style_net: str | os.PathLike | None = None,
    inception: str | os.PathLike | None = None,
    identity_net: str | os.PathLike | None = None,
    photos: str | os.PathLike | None = None,
    encoder: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[dict[str, Any], str]:
    """The whole search from files: check the inputs (cheap checks first), score, recommend,
    write ``out``; returns the report and the printable table with the recommendation."""
    from teacher.io import load_generator

    device = torch.device(device)
    if (style_net is None) == (inception is None):
        raise BlendSearchError(
            "pass exactly one style feature network: --style-net FILE (TorchScript, net(x) -> "
            "[N, F]) or --inception inception-2015-12-05.pt (NVIDIA stylegan2-ada-pytorch "
            "pretrained/metrics/); never the model's own discriminator"
        )
    if style_net is not None:
        style = torchscript_features(
            load_torchscript(style_net, "--style-net", "a style feature network"),
            device,
            str(style_net),
        )
    else:
        style = inception_features(inception, device)
    if identity_net is not None:
        identity = torchscript_features(
            load_torchscript(identity_net, "--identity-net", "a face embedding network"),
            device,
            str(identity_net),
        )
    else:
        dlib_available()
        identity = dlib_features
    if not Path(data).exists():
        raise BlendSearchError(
            f"--data {data}: not found; pass the aligned game set (folder or zip) you fine-tuned on"
        )
    if (photos is None) != (encoder is None):
        raise BlendSearchError(
            "scoring on real photos needs both --photos DIR (aligned photos) and --encoder FILE "
            "(toon-teacher encoder train, for the base) to code them"
        )
    if encoder is not None and not Path(encoder).is_file():
        raise BlendSearchError(
            f"--encoder {encoder}: not found; train one for the base with toon-teacher encoder "
            "train"
        )
    if photos is not None and not Path(photos).exists():
        raise BlendSearchError(f"--photos {photos}: not found; pass aligned photos (folder or zip)")
    base = load_generator(base_path).to(device)
    toon = load_generator(toon_path).to(device)
    check_same_arch(base, toon)
    log("reading the game set")
    game = dataset_features(data, style, base.img_resolution, base.img_channels, cfg.batch)
    coded = None
    if photos is not None:
        log("coding the photos")
        coded = code_photos(photos, encoder or "", base, cfg.batch, base_path, log)

    rows, grids = search(base, toon, game, style, identity, cfg, log, coded)
    best, alternatives = recommend(rows, cfg.alternatives)
    inputs = describe_inputs(
        base=base_path,
        toon=toon_path,
        style_net=style_net,
        inception=inception,
        identity_net=identity_net,
    )
    inputs["data"] = {"path": str(data), "images": int(game.shape[0])}
    if coded is not None:
        inputs["photos"] = {"path": str(photos), "images": int(coded[0].shape[0])}
        inputs["encoder"] = describe_inputs(encoder=encoder)["encoder"]
    inputs["scored_on"] = "delta images of the photos" if coded is not None else "seed renders"
    inputs["identity"] = "identity-net L2" if identity_net else "dlib face descriptor"
    report = build_report(rows, best, alternatives, cfg, inputs, str(base_path), str(toon_path))
    text = format_table(rows, best) + "\n\n" + summary_lines(report, cfg)
    note = (
        f"changed face: distance > {cfg.identity_threshold:g}; keeps: share <= {cfg.max_changed:g}"
    )
    write_outputs(out, report, text, draw_plot(rows, best, note), grids)
    return report, text


@torch.no_grad()
def code_photos(
    folder: str | os.PathLike,
    encoder_path: str | os.PathLike,
    base: Generator,
    batch: int,
    base_path: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The aligned photos of ``folder`` (folder or zip at the base's resolution, read like the
    game set) as uint8 ``[N, C, H, W]`` on the CPU, and their W+ codes from the encoder (its
    passes rendered by ``base``) on the CPU."""
    from teacher.encoder import check_pair, encode_images, load_encoder

    ds = ImageDataset(folder, resolution=base.img_resolution, channels=base.img_channels)
    if len(ds) < 2:
        raise BlendSearchError(f"--photos {folder}: KID needs at least 2 photos, found {len(ds)}")
    E = load_encoder(encoder_path).to(next(base.parameters()).device).eval()
    warning = check_pair(E, base, base_path)
    if warning:
        log(f"warning: {warning}")
    images = torch.from_numpy(np.stack([ds[i][0] for i in range(len(ds))]))
    return images, encode_images(E, images.permute(0, 2, 3, 1).numpy(), batch, base)


def summary_lines(report: dict[str, Any], cfg: SearchConfig) -> str:
    """The recommendation and alternatives as printable lines."""
    rec, alts = report["recommendation"], report["alternatives"]

    def one(r: dict[str, Any]) -> str:
        same = f" (= {r['same_as']})" if r["same_as"] else ""
        norm = "-" if r["style_norm"] is None else f"{r['style_norm']:.2f}"
        return (
            f"{r['direction']} R={r['level']}{same}: style {norm}, changed "
            f"{r['share_changed']:.2f}\n    {r['blend_command']}"
        )

    lines = []
    if rec:
        lines.append("recommended: " + one(rec))
        lines += ["alternative: " + one(r) for r in alts]
    else:
        lines.append(
            f"no blend keeps identity (at most {cfg.max_changed:g} of faces changed); raise "
            "--max-changed or see the closest:"
        )
        lines += ["closest: " + one(r) for r in alts]
    return "\n".join(lines)

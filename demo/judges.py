"""The miniature's two offline judges: is an image game-style, and whose face is it?

    from demo.judges import load_judges, train_judges, JudgeConfig

    train_judges("demo/assets/judges32.safetensors", JudgeConfig(size=32))   # or the CLI below
    j = load_judges("demo/assets/judges32.safetensors")
    j.style_score(images)             # uint8 [N, S, S, 3] -> P(game style), float64 [N]
    j.param_error(images, params)     # -> identity error per image, float64 [N]
    game_truth_error(j, params)       # the same error on the true game renders (the reference)

Both are small CNNs trained only on procedural renders (:mod:`demo.synthetic`) from seeds of
their own (``JUDGE_SEED_BASE`` + ...), never on the student's or the teacher's data, and both
judge images at the model's resolution ``S`` (32 or 64; other sizes are refused, not resized).

**Style classifier** (``classifier``): photo renders of one set of faces against game renders of
another (unpaired, disjoint seeds). A quarter of each batch is *hard negatives*, photo renders
that stay labelled photo after one to three of: Gaussian blur, a colour shift (channel gains,
offsets and mixing), a contrast/brightness/saturation change, JPEG compression (quality 15-75)
and down-up-sampling (factor 1.5-3). A blurry, washed-out or colour-shifted photo is therefore
not called game-style; only the drawing (flat cel shading, ink lines, no skin texture) is. A third
of the game renders are softened the same ways (blur, JPEG, down-up; never recoloured beyond a
mild jitter), so sharpness alone does not decide either: a soft but cel-shaded output of a 32 px
model still counts as game-style.

**Identity regressor** (``regressor``): trained on renders of *both* styles (photos also blurred,
JPEG-compressed or down-up-sampled, never colour-shifted, since colour is a target), so it reads
who the face is, not how it is drawn. It predicts the parameters that describe the person and
that the game style keeps: ``hair_style`` (4 classes), hair colour (``hair.r/g/b``), skin tone
(``skin.r/g/b``), ``jaw`` and the mouth (``mouth_width``, ``smile``). Left out: pose jitter,
background and shirt (not the person), eye size (the game style redraws the eyes), iris and lips
(tiny at 32 px; lips follow from the skin), and the finer proportions (head, nose, brows, hair
volume), which the outcome's goals do not name.

``param_error`` is the mean of five components, each on a comparable scale: hair style (1 when
misclassified, else 0), hair colour, skin tone, jaw, mouth, each the mean absolute error of its
targets divided by the target's standard deviation over the training faces (a random guess
scores about 1.1 per component). :func:`game_truth_error` gives the error on the exact game
renders of the same faces; on the user's path :mod:`demo.outcome` holds a model's crops to the
truth cut the same way instead (at most 1.5x), and reports the ratio to this one beside it.

Files are safetensors (``classifier.*``, ``regressor.*``, ``target_mean``, ``target_std``) with
JSON metadata under ``toon``: kind ``demo.judges``, arch, training config and time, held-out
figures. Training is deterministic given the config (item k of each set depends only on its
seed and k). CLI: ``python -m demo.judges train --size 32 --out demo/assets/judges32.safetensors``
and ``python -m demo.judges eval --judges FILE``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from common.cli import ToonError, run_command
from common.files import atomic_write
from common.weights import state_mismatch
from demo.synthetic import HAIR_STYLES, FaceParams, item_params, render

__all__ = [
    "GAME_OPS",
    "GROUPS",
    "HARD_OPS",
    "JUDGE_SEED_BASE",
    "REG_TARGETS",
    "JudgeConfig",
    "Judges",
    "JudgesFileError",
    "evaluate_judges",
    "fit_judges",
    "game_truth_error",
    "degrade",
    "load_judges",
    "render_set",
    "save_judges",
    "train_judges",
]

FORMAT_VERSION = 1
KIND = "demo.judges"
JUDGE_SEED_BASE = 7_140_000  # far from the demo's dataset seeds (0..~10^4)
SEED_ROLES = {"photo": 1, "game": 2, "heldout_photo": 3, "heldout_game": 4}
REG_TARGETS = ("hair.r", "hair.g", "hair.b", "skin.r", "skin.g", "skin.b", "jaw")
REG_TARGETS += ("mouth_width", "smile")
# param_error components: name -> indices into REG_TARGETS (hair_style is the classifier head).
GROUPS = {
    "hair_style": (),
    "hair_colour": (0, 1, 2),
    "skin_tone": (3, 4, 5),
    "jaw": (6,),
    "mouth": (7, 8),
}
HARD_OPS = ("blur", "colour", "contrast", "jpeg", "downup")
GAME_OPS = ("blur", "jpeg", "downup")  # softenings a game-style positive may also get
_NAMES = FaceParams.vector_names()
_REG_IDX = [_NAMES.index(n) for n in REG_TARGETS]
_HAIR_IDX = _NAMES.index("hair_style")


class JudgesFileError(ToonError):
    """A judges file is missing, unreadable or not a judges file (one-line message)."""


@dataclass(frozen=True)
class JudgeConfig:
    """How the judges are trained (every field is a CLI flag)."""

    size: int = 32  # image side the judges read (the model's resolution)
    faces: int = 2000  # training renders per style (photo and game, disjoint faces)
    heldout: int = 300  # held-out renders per style for the figures stored in the file
    classifier_steps: int = 1000  # optimiser steps of the style classifier
    regressor_steps: int = 2000  # optimiser steps of the identity regressor
    batch: int = 64
    lr: float = 2e-3  # Adam, cosine-decayed to 0
    width: int = 16  # channels of the first conv; doubled per stride up to 4x
    seed: int = 0  # picks the render seeds (JUDGE_SEED_BASE + 10 * seed + role) and the init
    workers: int = 2  # render processes
    threads: int = 1  # torch threads while training (1 is fastest on a shared 2-core machine)


# -- networks -----------------------------------------------------------------------------------


def _trunk(size: int, width: int, cap: int, double: bool) -> tuple[nn.Sequential, int]:
    """Conv stack [N,3,S,S] -> [N,C,4,4]: one 3x3 conv, then per halving a stride-2 conv (and
    a second 3x3 conv when ``double``); channels double from ``width`` up to ``cap``."""
    if size < 16 or size & (size - 1):
        raise ValueError(f"judge size must be a power of two >= 16, got {size}")
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.LeakyReLU(0.2)]
    c, s = width, size
    while s > 4:
        c_out = min(2 * c, cap)
        layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        if double:
            layers += [nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.2)]
        c, s = c_out, s // 2
    return nn.Sequential(*layers), c


class StyleClassifier(nn.Module):
    """[N,3,S,S] in [-1,1] -> game-style logit [N]. Global pooling: style is texture."""

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        self.features, c = _trunk(size, width, 2 * width, double=False)
        self.head = nn.Linear(2 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
        return self.head(h)[:, 0]


class ParamRegressor(nn.Module):
    """[N,3,S,S] in [-1,1] -> (hair-style logits [N,4], standardised targets [N,len(REG)]).
    Flattened 4x4 features: the jaw and the mouth are read where they are."""

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        self.features, c = _trunk(size, width, 4 * width, double=True)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, 64), nn.LeakyReLU(0.2))
        self.head = nn.Linear(64, len(HAIR_STYLES) + len(REG_TARGETS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.fc(self.features(x)))
        return out[:, : len(HAIR_STYLES)], out[:, len(HAIR_STYLES) :]


def _to_input(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N,S,S,3] -> float32 [N,3,S,S] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"images must be uint8 [N,H,W,3], got {x.dtype} {tuple(x.shape)}")
    if tuple(x.shape[1:3]) != (size, size):
        raise ValueError(
            f"these judges read {size}x{size} images, got {x.shape[1]}x{x.shape[2]}: compare at "
            "the model's resolution (or train judges for this size)"
        )
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _param_array(params: Any) -> np.ndarray:
    """FaceParams, a list of them, or vectors [N, len(vector_names)] -> float64 [N, D]."""
    if isinstance(params, FaceParams):
        params = [params]
    if len(params) and isinstance(params[0], FaceParams):
        return np.stack([p.to_vector() for p in params])
    v = np.asarray(params, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(_NAMES):
        raise ValueError(f"params must be FaceParams or vectors [N,{len(_NAMES)}], got {v.shape}")
    return v


class Judges(nn.Module):
    """Both judges and the target statistics; ``arch`` = {size, width}."""

    def __init__(self, size: int = 32, width: int = 16) -> None:
        super().__init__()
        self.arch = {"size": int(size), "width": int(width)}
        self.size = int(size)
        self.classifier = StyleClassifier(size, width)
        self.regressor = ParamRegressor(size, width)
        self.register_buffer("target_mean", torch.zeros(len(REG_TARGETS)))
        self.register_buffer("target_std", torch.ones(len(REG_TARGETS)))
        self.info: dict[str, Any] = {}

    @torch.no_grad()
    def style_score(self, images: np.ndarray) -> np.ndarray:
        """P(game style) of each uint8 [N,S,S,3] image, float64 [N]."""
        x = _to_input(images, self.size)
        out = [torch.sigmoid(self.classifier(x[i : i + 256])) for i in range(0, len(x), 256)]
        return torch.cat(out).double().numpy() if out else np.zeros(0)

    @torch.no_grad()
    def predict_params(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hair-style index [N], REG_TARGETS values [N, 9] in parameter units)."""
        x = _to_input(images, self.size)
        cls, reg = [], []
        for i in range(0, len(x), 256):
            c, r = self.regressor(x[i : i + 256])
            cls.append(c.argmax(1))
            reg.append(r * self.target_std + self.target_mean)
        if not cls:
            return np.zeros(0, np.int64), np.zeros((0, len(REG_TARGETS)))
        return torch.cat(cls).numpy(), torch.cat(reg).double().numpy()

    def param_components(self, images: np.ndarray, params: Any) -> dict[str, np.ndarray]:
        """Each component of :meth:`param_error` per image (see the module docstring)."""
        v = _param_array(params)
        if len(v) != len(images):
            raise ValueError(f"{len(images)} images but {len(v)} parameter sets")
        hair, reg = self.predict_params(images)
        z = np.abs(reg - v[:, _REG_IDX]) / self.target_std.double().numpy()
        out = {"hair_style": (hair != np.rint(v[:, _HAIR_IDX])).astype(np.float64)}
        for name, idx in GROUPS.items():
            if idx:
                out[name] = z[:, list(idx)].mean(1)
        return out

    def param_error(self, images: np.ndarray, params: Any) -> np.ndarray:
        """Identity error per image, float64 [N]: the mean of the five components."""
        return np.mean(list(self.param_components(images, params).values()), axis=0)


class _StyleFeatures(nn.Module):
    """The classifier's pooled features: [N,3,S,S] in [-1,1] -> [N,F] (a style space)."""

    def __init__(self, classifier: StyleClassifier) -> None:
        super().__init__()
        self.features = classifier.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)


class _IdentityEmbedding(nn.Module):
    """The regressor's reading of who the face is: standardised targets and hair-style
    probabilities, [N,3,S,S] in [-1,1] -> [N, len(REG_TARGETS) + len(HAIR_STYLES)]."""

    def __init__(self, regressor: ParamRegressor) -> None:
        super().__init__()
        self.regressor = regressor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hair, reg = self.regressor(x)
        return torch.cat([reg, torch.softmax(hair, 1)], 1)


# Faces whose identity threshold is calibrated (disjoint from training and the demo's seeds).
CALIBRATION_SEED = 990_000


@dataclass(frozen=True)
class FeatureNets:
    """TorchScript files for ``toon-teacher blend-search`` and the identity threshold."""

    style: Path
    identity: Path
    identity_threshold: float


def export_feature_nets(judges: Judges, out_dir: str | os.PathLike, n: int = 200) -> FeatureNets:
    """Write the judges as ``blend-search`` feature networks (``--style-net``,
    ``--identity-net``: TorchScript, float [N,3,S,S] in [-1,1] in, features out) and calibrate
    the identity threshold: the 95th percentile of the embedding distance between the photo and
    the game drawing of the same face (so a blend counts as another person only when it moves
    further than a true restyle does), over ``n`` faces never used in training."""
    out = Path(out_dir)
    example = torch.zeros([2, 3, judges.size, judges.size])
    paths = {}
    for name, module in (
        ("style", _StyleFeatures(judges.classifier)),
        ("identity", _IdentityEmbedding(judges.regressor)),
    ):
        with warnings.catch_warnings():  # TorchScript is what blend-search reads
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(module.eval(), example)
        paths[name] = atomic_write(
            out / f"judge_{name}.pt", lambda t, m=traced: torch.jit.save(m, str(t))
        )
    photo = render_set(CALIBRATION_SEED, n, "photo", judges.size)["images"]
    game = render_set(CALIBRATION_SEED, n, "game", judges.size)["images"]
    with torch.no_grad():
        embed = _IdentityEmbedding(judges.regressor).eval()
        d = (embed(_to_input(photo, judges.size)) - embed(_to_input(game, judges.size))).norm(dim=1)
    threshold = float(np.percentile(d.numpy(), 95))
    return FeatureNets(paths["style"], paths["identity"], round(threshold, 4))


def game_truth_error(judges: Judges, params: Any) -> np.ndarray:
    """:meth:`Judges.param_error` on the exact game renders of ``params`` at the judges' size:
    the reference for a toonifier's outputs of the same faces."""
    v = _param_array(params)
    imgs = np.stack([render(FaceParams.from_vector(p), "game", judges.size) for p in v])
    return judges.param_error(imgs, v)


# -- data ---------------------------------------------------------------------------------------


def _render_one(job: tuple[int, int, str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    seed, i, style, size = job
    p, rng = item_params(seed, i)
    img = render(p, style, size, rng)
    jpeg = _jpeg(img, int(np.random.default_rng([seed, i, 7]).integers(15, 76)))
    return img, jpeg, p.to_vector()


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB")).copy()


def render_set(seed: int, n: int, style: str, size: int, workers: int = 1) -> dict[str, np.ndarray]:
    """Items 0..n-1 of ``seed`` in ``style``: ``images`` uint8 [n,S,S,3], ``jpeg`` (the same,
    JPEG-compressed at a per-item quality 15-75) and ``params`` [n, D]."""
    jobs = [(int(seed), i, style, int(size)) for i in range(int(n))]
    if workers > 1 and n >= 32:
        ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            out = list(ex.map(_render_one, jobs, chunksize=16))
    else:
        out = [_render_one(j) for j in jobs]
    imgs, jpegs, vecs = zip(*out, strict=True) if out else ((), (), ())
    shape = (0, size, size, 3)
    return {
        "images": np.stack(imgs) if out else np.zeros(shape, np.uint8),
        "jpeg": np.stack(jpegs) if out else np.zeros(shape, np.uint8),
        "params": np.stack(vecs) if out else np.zeros((0, len(_NAMES))),
    }


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur of [N,3,H,W] with ``sigma`` [N] (pixels, reflect padding)."""
    n, c, h, w = x.shape
    r = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].clamp_min(1e-3)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [N*C, 2r+1]
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _colour(x: torch.Tensor, g: torch.Generator, amount: float) -> torch.Tensor:
    """Channel mixing near identity, gains and offsets; x in [0,1]."""
    n = len(x)
    mix = torch.eye(3) + amount * 0.6 * torch.randn(n, 3, 3, generator=g)
    gain = 1 + amount * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)
    off = amount * 0.4 * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)
    return torch.einsum("nij,njhw->nihw", mix, x) * gain + off


def _contrast(x: torch.Tensor, g: torch.Generator, amount: float) -> torch.Tensor:
    """Contrast, brightness and saturation; x in [0,1]."""
    n = len(x)

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=g)

    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * u(1 - 0.5 * amount, 1 + 0.6 * amount) + u(-0.15, 0.15) * amount
    gray = x.mean(1, keepdim=True)
    return gray + (x - gray) * u(1 - 0.7 * amount, 1 + 0.7 * amount)


def _downup(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    s = x.shape[-1]
    f = float(1.5 + 1.5 * torch.rand(1, generator=g))
    small = F.interpolate(x, size=max(4, round(s / f)), mode="area")
    return F.interpolate(small, size=s, mode="bilinear", align_corners=False)


def degrade(
    images: torch.Tensor,
    jpeg: torch.Tensor,
    g: torch.Generator,
    ops: tuple[str, ...] = (),
    choices: tuple[str, ...] = HARD_OPS,
) -> torch.Tensor:
    """Degraded renders, uint8 [N,S,S,3] -> uint8 (``jpeg``: the same renders JPEG-compressed,
    from :func:`render_set`). ``ops`` empty: one to three random ``choices`` per image, else
    exactly ``ops``; applied in :data:`HARD_OPS` order. Strengths scale with the image size
    (blur sigma 0.4-1.5 px at 32 px, down-up factor 1.5-3)."""
    n, s = len(images), images.shape[1]
    if n == 0:
        return images
    if ops:
        use = torch.tensor([[op in ops for op in HARD_OPS]] * n)
    else:
        allowed = torch.tensor([op in choices for op in HARD_OPS])
        use = (torch.rand(n, len(HARD_OPS), generator=g) < 0.35) & allowed
        pick = torch.nonzero(allowed)[:, 0]
        use[torch.arange(n), pick[torch.randint(len(pick), (n,), generator=g)]] = True
    src = torch.where(use[:, 3, None, None, None], jpeg, images)
    x = src.permute(0, 3, 1, 2).float() / 255
    for k, op in enumerate(HARD_OPS):
        m = use[:, k]
        if not m.any() or op == "jpeg":
            continue
        if op == "blur":
            sigma = (0.4 + 1.1 * torch.rand(int(m.sum()), generator=g)) * s / 32
            x[m] = _blur(x[m], sigma)
        elif op == "colour":
            x[m] = _colour(x[m], g, 0.2)
        elif op == "contrast":
            x[m] = _contrast(x[m], g, 1.0)
        else:
            x[m] = _downup(x[m], g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def _flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    m = torch.rand(len(x), generator=g) < 0.5
    x = x.clone()
    x[m] = x[m].flip(2)
    return x


# -- training -----------------------------------------------------------------------------------


def _seed(cfg: JudgeConfig, role: str) -> int:
    return JUDGE_SEED_BASE + 10 * int(cfg.seed) + SEED_ROLES[role]


def _lr(cfg: JudgeConfig, step: int, steps: int) -> float:
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))


def _batch(g: torch.Generator, n: int, k: int) -> torch.Tensor:
    return torch.randint(n, (k,), generator=g)


def fit_judges(
    cfg: JudgeConfig, log=print, data: dict[str, dict[str, np.ndarray]] | None = None
) -> Judges:
    """Train both judges from scratch (deterministic given ``cfg``); ``judges.info`` holds the
    config, the time and the held-out figures. ``data`` may pass pre-rendered sets keyed by
    :data:`SEED_ROLES` (as :func:`render_set` returns them; tests share one across runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _fit(cfg, log, dict(data or {}))
    finally:
        torch.set_num_threads(threads)


def _fit(cfg: JudgeConfig, log, data: dict[str, dict[str, np.ndarray]]) -> Judges:
    t0 = time.perf_counter()
    # Data: four disjoint sets of faces, both styles unpaired.
    for role in SEED_ROLES:
        if role not in data:
            style = "game" if role.endswith("game") else "photo"
            n = cfg.heldout if role.startswith("heldout") else cfg.faces
            data[role] = render_set(_seed(cfg, role), n, style, cfg.size, cfg.workers)
    t_data = time.perf_counter() - t0
    log(f"rendered {sum(len(d['images']) for d in data.values())} faces in {t_data:.0f} s")
    photo = {k: torch.from_numpy(v) for k, v in data["photo"].items()}
    game = {k: torch.from_numpy(v) for k, v in data["game"].items()}
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        judges = Judges(cfg.size, cfg.width)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    vec = torch.cat([photo["params"], game["params"]])
    judges.target_mean.copy_(vec[:, _REG_IDX].mean(0))
    judges.target_std.copy_(vec[:, _REG_IDX].std(0).clamp_min(1e-6))
    np_, ng, q = len(photo["images"]), len(game["images"]), cfg.batch // 4

    # Classifier: half game (a third of them softened, some colour-jittered), a quarter clean
    # photos, a quarter hard negatives (degraded photos, still labelled photo).
    net = judges.classifier.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    for step in range(cfg.classifier_steps):
        for pg in opt.param_groups:
            pg["lr"] = _lr(cfg, step, cfg.classifier_steps)
        gi, pi, hi = _batch(g, ng, 2 * q), _batch(g, np_, q), _batch(g, np_, q)
        gm = game["images"][gi]
        m = torch.rand(len(gi), generator=g) < 1 / 3
        gm[m] = degrade(gm[m], game["jpeg"][gi][m], g, choices=GAME_OPS)
        gm = gm.permute(0, 3, 1, 2).float() / 255
        m = torch.rand(len(gi), generator=g) < 0.3
        gm[m] = _colour(gm[m], g, 0.06).clamp(0, 1)
        gm = (gm * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        hard = degrade(photo["images"][hi], photo["jpeg"][hi], g)
        x = _flip(torch.cat([gm, photo["images"][pi], hard]), g)
        y = torch.cat([torch.ones(2 * q), torch.zeros(2 * q)])
        loss = F.binary_cross_entropy_with_logits(net(_to_input(x, cfg.size)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.classifier_steps - 1:
            log(f"classifier step {step}: loss {loss.item():.4f}")

    # Regressor: half photos (half of them blurred, JPEG'd or down-up-sampled), half game.
    net = judges.regressor.train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    mean, std = judges.target_mean, judges.target_std
    for step in range(cfg.regressor_steps):
        for pg in opt.param_groups:
            pg["lr"] = _lr(cfg, step, cfg.regressor_steps)
        pi, gi = _batch(g, np_, 2 * q), _batch(g, ng, 2 * q)
        ph = photo["images"][pi]
        m = torch.rand(len(pi), generator=g) < 0.5
        ops = ("blur",) if step % 3 == 0 else ("jpeg",) if step % 3 == 1 else ("downup",)
        ph[m] = degrade(ph[m], photo["jpeg"][pi][m], g, ops)
        x = _flip(torch.cat([ph, game["images"][gi]]), g)
        v = torch.cat([photo["params"][pi], game["params"][gi]]).float()
        cls, reg = net(_to_input(x, cfg.size))
        loss = F.cross_entropy(cls, v[:, _HAIR_IDX].round().long())
        loss = loss + F.mse_loss(reg, (v[:, _REG_IDX] - mean) / std)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.regressor_steps - 1:
            log(f"regressor step {step}: loss {loss.item():.4f}")

    judges.eval()
    t_train = time.perf_counter() - t0 - t_data
    heldout = evaluate_judges(judges, data["heldout_photo"], data["heldout_game"], cfg.seed)
    judges.info = {
        "training": {
            "config": asdict(cfg),
            "seeds": {role: _seed(cfg, role) for role in SEED_ROLES},
            "render_seconds": round(t_data, 1),
            "train_seconds": round(t_train, 1),
        },
        "heldout": heldout,
    }
    log(f"trained in {t_train:.0f} s; held-out: {json.dumps(heldout)}")
    return judges


def evaluate_judges(
    judges: Judges, photo: dict[str, np.ndarray], game: dict[str, np.ndarray], seed: int = 0
) -> dict[str, Any]:
    """Held-out figures from two :func:`render_set` outputs (different faces per style):
    classifier accuracy on photos, games and each kind of hard negative (and all of them at
    once), the regressor's error components on game and photo renders, hair-style accuracy, and
    the error on game renders with shuffled (mismatched) parameters, and the error of each
    regression target on game renders."""
    g = torch.Generator().manual_seed(10_000 + int(seed))
    ph, jp = torch.from_numpy(photo["images"]), torch.from_numpy(photo["jpeg"])
    acc = {
        "photo": float(np.mean(judges.style_score(photo["images"]) < 0.5)),
        "game": float(np.mean(judges.style_score(game["images"]) >= 0.5)),
    }
    for op in HARD_OPS:
        hard = degrade(ph, jp, g, (op,)).numpy()
        acc[f"photo_{op}"] = float(np.mean(judges.style_score(hard) < 0.5))
    hard = degrade(ph, jp, g).numpy()
    acc["photo_hard_mixed"] = float(np.mean(judges.style_score(hard) < 0.5))
    gm, gj = torch.from_numpy(game["images"]), torch.from_numpy(game["jpeg"])
    for op in GAME_OPS:
        soft = degrade(gm, gj, g, (op,)).numpy()
        acc[f"game_{op}"] = float(np.mean(judges.style_score(soft) >= 0.5))

    def components(images: np.ndarray, params: np.ndarray) -> dict[str, float]:
        c = judges.param_components(images, params)
        out = {k: round(float(v.mean()), 4) for k, v in c.items()}
        out["error"] = round(float(np.mean(list(c.values()), axis=0).mean()), 4)
        return out

    gv = game["params"]
    shuffled = gv[np.random.default_rng(seed).permutation(len(gv))]
    return {
        "n_photo": len(photo["images"]),
        "n_game": len(game["images"]),
        "style_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "param_error_game": components(game["images"], gv),
        "param_error_photo": components(photo["images"], photo["params"]),
        "param_error_game_shuffled": components(game["images"], shuffled),
        "target_error_game": {
            name: round(float(v), 4)
            for name, v in zip(REG_TARGETS, _target_errors(judges, game), strict=True)
        },
    }


def _target_errors(judges: Judges, game: dict[str, np.ndarray]) -> np.ndarray:
    """Mean |error| / std of each REG_TARGETS entry on ``game`` (the split behind a group)."""
    _, reg = judges.predict_params(game["images"])
    z = np.abs(reg - game["params"][:, _REG_IDX]) / judges.target_std.double().numpy()
    return z.mean(0)


# -- files --------------------------------------------------------------------------------------


def save_judges(judges: Judges, path: str | os.PathLike) -> Path:
    """Write ``judges`` (float32 state, ``toon`` metadata) atomically."""
    meta = {"format_version": FORMAT_VERSION, "kind": KIND, "arch": judges.arch}
    meta.update({"targets": list(REG_TARGETS), "hair_styles": list(HAIR_STYLES)})
    meta.update(judges.info)
    state = {k: v.detach().float().contiguous() for k, v in judges.state_dict().items()}

    return atomic_write(
        path, lambda tmp: save_file(state, str(tmp), metadata={"toon": json.dumps(meta)})
    )


def load_judges(path: str | os.PathLike) -> Judges:
    """Judges from a file written by :func:`save_judges` (strict), in eval mode. Every failure
    is a :class:`JudgesFileError` with one line naming the file."""
    path = Path(path)
    hint = "train one with: python -m demo.judges train --size 32 --out " + str(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "file not found"
        raise JudgesFileError(f"{path}: {what}, expected a judges .safetensors file ({hint})")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get("toon")
            state = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(raw) if raw else {}
    except Exception:  # safetensors and json raise their own types for any bad file
        raise JudgesFileError(f"{path}: not a safetensors file with toon metadata") from None
    if meta.get("kind") != KIND or meta.get("format_version") != FORMAT_VERSION:
        raise JudgesFileError(
            f"{path}: holds {meta.get('kind')!r} v{meta.get('format_version')}, not "
            f"{KIND!r} v{FORMAT_VERSION} ({hint})"
        )
    arch = meta.get("arch") or {}
    try:
        judges = Judges(int(arch["size"]), int(arch["width"]))
    except (KeyError, TypeError, ValueError) as e:
        raise JudgesFileError(f"{path}: bad arch {arch!r}: {e}") from None
    problem = state_mismatch(judges.state_dict(), state)
    if problem:
        raise JudgesFileError(f"{path}: {problem}")
    judges.load_state_dict(state, strict=True)
    judges.info = {k: v for k, v in meta.items() if k in ("training", "heldout")}
    return judges.eval()


def train_judges(
    out_path: str | os.PathLike, cfg: JudgeConfig = JudgeConfig(), log=print
) -> Judges:
    """:func:`fit_judges`, then :func:`save_judges` to ``out_path``."""
    judges = fit_judges(cfg, log)
    save_judges(judges, out_path)
    log(f"wrote {out_path}")
    return judges


# -- CLI ----------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    fields = {k: getattr(args, k) for k in asdict(JudgeConfig())}
    cfg = JudgeConfig(**fields)
    if args.dry_run:
        print(json.dumps(asdict(cfg), indent=1))
        return 0
    train_judges(args.out, cfg, log=lambda line: print(line, flush=True))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    judges = load_judges(args.judges)
    seed = JUDGE_SEED_BASE + 9 + 10 * args.seed  # a role no training run uses
    photo = render_set(seed, args.n, "photo", judges.size, args.workers)
    game = render_set(seed + 100_000, args.n, "game", judges.size, args.workers)
    print(json.dumps(evaluate_judges(judges, photo, game, args.seed), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo.judges", description=__doc__.split("\n")[0])
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers()
    tr = sub.add_parser("train", help="train both judges and save them")
    tr.add_argument("--out", required=True, help="output .safetensors")
    for name, value in asdict(JudgeConfig()).items():
        tr.add_argument(f"--{name}", type=type(value), default=value)
    tr.add_argument("--dry-run", action="store_true", help="print the config and exit")
    tr.set_defaults(func=_cmd_train)
    ev = sub.add_parser("eval", help="held-out figures of a judges file on fresh renders")
    ev.add_argument("--judges", required=True)
    ev.add_argument("--n", type=int, default=300, help="fresh renders per style")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--workers", type=int, default=2)
    ev.set_defaults(func=_cmd_eval)
    return run_command("demo.judges", ap, argv, usage_without_command=True)


if __name__ == "__main__":
    sys.exit(main())

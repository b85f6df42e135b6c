"""An inversion encoder: an aligned face image to a W+ code of one generator, in one pass.

The network (after pSp, Richardson et al. 2021, and e4e, Tov et al. 2021, re-derived for this
project): a residual convolutional pyramid from the image down to 4x4; each level is reduced to
``head_channels`` and pooled to a 4x4 grid, and the concatenated grids feed one hidden layer
that predicts a *base* offset shared by every layer and one *delta* per layer (zero at
initialisation, so training starts in W). The code is

    ws[i] = w_avg + w_std * (base + delta[i])

where ``w_avg`` and ``w_std`` (per dimension) are the generator's W statistics, stored in the
encoder as buffers: outputs are absolute W+ codes for that generator, and the deltas measure
how far a code leaves W (the training loss keeps them small, so the blended teacher, whose
fine layers see the same codes, renders them well).

**Feedback passes** (after ReStyle, Alaluf et al. 2021): an encoder built with ``feedback=1``
reads the image *and* the generator's render of the current code (6 channels) and predicts a
correction, ``ws_{t+1} = ws_t + w_std * (base + delta[i])``. The first pass starts at
``ws_0 = w_avg`` with the render of ``w_avg`` (the mean face, a buffer), so it is an ordinary
one-pass encoder; each later pass costs one encoder and one generator forward and sees what the
current code still gets wrong. :meth:`Encoder.invert` runs ``passes`` of them (by default the
number the encoder was trained with).

Degradations (:func:`degrade`) make the generator's own renders look like photos during
training: colour and exposure shifts, Gaussian blur, sensor noise and JPEG, each drawn per
image from a ``torch.Generator`` so a training step is a function of its seed.

Files: safetensors with ``toon`` metadata of kind ``teacher.encoder``: the constructor
arguments, and under ``generator`` the file name and sha256 of the generator whose W it codes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from common.cli import error_line
from common.files import atomic_write, file_sha256
from common.weights import state_mismatch
from teacher.spec import CheckpointError

KIND_ENCODER = "teacher.encoder"
FORMAT_VERSION = 1


def _channels(res: int, channel_base: int, channel_max: int) -> int:
    return max(1, min(channel_base // res, channel_max))


class DownBlock(nn.Module):
    """Two 3x3 convolutions (group norm, leaky ReLU) and a 2x average pool, with a 1x1 skip."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(cin, cin, 3, padding=1)
        self.norm0 = nn.GroupNorm(min(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm0(self.conv0(x)), 0.2)
        y = F.leaky_relu(self.norm1(self.conv1(y)), 0.2)
        return (F.avg_pool2d(y, 2) + F.avg_pool2d(self.skip(x), 2)) * math.sqrt(0.5)


class EncoderPass(NamedTuple):
    """One pass of :meth:`Encoder.trace`: the per-layer ``delta`` (units of ``w_std``), the
    W+ ``code`` after the pass and its render (None when not asked for)."""

    delta: torch.Tensor
    code: torch.Tensor
    render: torch.Tensor | None


class Encoder(nn.Module):
    """Aligned image ``[N, 3, R, R]`` in [-1, 1] -> W+ code ``[N, num_ws, w_dim]``."""

    def __init__(
        self,
        img_resolution: int,  # input side (the generator's resolution), a power of two >= 8
        num_ws: int,  # the generator's number of ws
        w_dim: int,  # the generator's w size
        channel_base: int = 1024,  # channels at resolution r: min(channel_base // r, channel_max)
        channel_max: int = 64,
        head_channels: int = 8,  # channels of each level's 4x4 summary
        hidden: int = 256,  # the hidden layer before the code
        img_channels: int = 3,
        feedback: int = 0,  # 1: also reads the render of the current code (feedback passes)
        passes: int = 1,  # passes :meth:`invert` runs by default (more than 1 needs feedback)
    ) -> None:
        super().__init__()
        log2 = int(round(math.log2(img_resolution)))
        if img_resolution < 8 or 2**log2 != img_resolution:
            raise ValueError(
                f"encoder resolution must be a power of two >= 8, got {img_resolution}"
            )
        if feedback not in (0, 1) or passes < 1 or (passes > 1 and not feedback):
            raise ValueError(
                f"passes={passes} with feedback={feedback}: more than one pass needs feedback=1"
            )
        self.arch = dict(
            img_resolution=img_resolution,
            num_ws=num_ws,
            w_dim=w_dim,
            channel_base=channel_base,
            channel_max=channel_max,
            head_channels=head_channels,
            hidden=hidden,
            img_channels=img_channels,
            feedback=feedback,
            passes=passes,
        )
        self.img_resolution, self.num_ws, self.w_dim = img_resolution, num_ws, w_dim
        self.img_channels = img_channels
        self.feedback, self.passes = bool(feedback), passes
        self.resolutions = [2**i for i in range(log2 - 1, 1, -1)]  # level sides: R/2 .. 4
        ch = lambda r: _channels(r, channel_base, channel_max)  # noqa: E731
        self.fromrgb = nn.Conv2d(img_channels * (2 if feedback else 1), ch(img_resolution), 1)
        prev = img_resolution
        for r in self.resolutions:
            setattr(self, f"b{prev}", DownBlock(ch(prev), ch(r)))
            setattr(self, f"head{r}", nn.Conv2d(ch(r), head_channels, 1))
            prev = r
        features = len(self.resolutions) * head_channels * 16
        self.fc = nn.Linear(features, hidden)
        self.to_base = nn.Linear(hidden, w_dim)
        self.to_delta = nn.Linear(hidden, num_ws * w_dim)
        nn.init.zeros_(self.to_delta.weight)
        nn.init.zeros_(self.to_delta.bias)
        self.register_buffer("w_avg", torch.zeros([w_dim]))
        self.register_buffer("w_std", torch.ones([w_dim]))
        if feedback:  # the generator's render of w_avg: the first pass's "current render"
            side = img_resolution
            self.register_buffer("avg_image", torch.zeros([img_channels, side, side]))

    def parts(
        self, img: torch.Tensor, recon: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(base [N, w_dim], delta [N, num_ws, w_dim])`` in units of ``w_std``; a feedback
        encoder also reads ``recon``, the render of the current code (the mean face when
        None)."""
        r = self.img_resolution
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, r, r):
            raise ValueError(
                f"encoder input must be [N, {self.img_channels}, {r}, {r}], got {tuple(img.shape)}"
            )
        if self.feedback:
            if recon is None:
                recon = self.avg_image.expand(img.shape[0], -1, -1, -1)
            img = torch.cat([img, recon.to(img.dtype)], dim=1)
        elif recon is not None:
            raise ValueError("this encoder has no feedback input (it was built with feedback=0)")
        x = F.leaky_relu(self.fromrgb(img), 0.2)
        prev = r
        summaries = []
        for res in self.resolutions:
            x = getattr(self, f"b{prev}")(x)
            s = getattr(self, f"head{res}")(x)
            summaries.append(F.adaptive_avg_pool2d(s, 4).flatten(1))
            prev = res
        h = F.leaky_relu(self.fc(torch.cat(summaries, dim=1)), 0.2)
        base = self.to_base(h)
        delta = self.to_delta(h).view(-1, self.num_ws, self.w_dim)
        return base, delta

    def codes(
        self, base: torch.Tensor, delta: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """W+ codes from :meth:`parts`: offsets from ``start`` (the current code of a feedback
        pass), or from ``w_avg`` when None."""
        origin = self.w_avg if start is None else start
        return origin + self.w_std * (base[:, None, :] + delta)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """The first pass: W+ codes ``[N, num_ws, w_dim]`` (offsets from ``w_avg``)."""
        return self.codes(*self.parts(img))

    def check_passes(self, passes: int) -> None:
        """Raise ValueError (one line) when this encoder cannot make ``passes`` passes."""
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        if passes > 1 and not self.feedback:
            raise ValueError(
                f"the encoder makes one pass, not {passes} (it has no feedback input; "
                "toon-teacher encoder train --passes N trains one that has)"
            )

    def trace(
        self,
        img: torch.Tensor,
        G: torch.nn.Module | None = None,
        passes: int | None = None,
        detach: bool = False,
        render_last: bool = True,
    ) -> Iterator[EncoderPass]:
        """The passes one by one (:class:`EncoderPass`): the first pass, then each pass
        corrects the code from the image and ``G``'s render of it (constant noise). ``G`` is
        the generator the encoder codes (needed for more than one pass, or to render);
        ``passes`` defaults to :attr:`passes`. ``detach``: each pass starts from the previous
        code and render detached (training: every pass learns on its own). ``render_last``
        False skips the last pass's render (its ``render`` is None)."""
        passes = self.passes if passes is None else int(passes)
        self.check_passes(passes)
        if G is None and passes > 1:
            raise ValueError(f"{passes} passes need the generator the encoder codes")
        if G is None and render_last:
            raise ValueError("rendering the codes needs the generator the encoder codes")
        start = recon = None
        for i in range(passes):
            base, delta = self.parts(img, recon)
            code = self.codes(base, delta, start)
            last = i == passes - 1
            recon = None
            if not last or render_last:
                recon = G.synthesis(code, noise_mode="const", force_fp32=True)
            yield EncoderPass(delta, code, recon)
            start = code.detach() if detach else code
            if recon is not None and detach:
                recon = recon.detach()

    def invert(
        self, img: torch.Tensor, G: torch.nn.Module | None = None, passes: int | None = None
    ) -> torch.Tensor:
        """W+ codes after ``passes`` (default :attr:`passes`; see :meth:`trace`). ``G`` is
        needed for more than one pass."""
        for step in self.trace(img, G, passes, render_last=False):
            ws = step.code
        return ws


def encoder_for(G: torch.nn.Module, preset: Mapping[str, Any], samples: int = 10000) -> Encoder:
    """A fresh encoder for generator ``G`` with its W statistics (``samples`` random z, c = 0,
    seed 0) in the buffers (and, with feedback, its render of ``w_avg``); ``preset`` gives
    channel_base, channel_max, head_channels, hidden and optionally feedback and passes."""
    E = Encoder(G.img_resolution, G.num_ws, G.w_dim, img_channels=G.img_channels, **preset)
    g = torch.Generator().manual_seed(0)
    device = next(G.parameters()).device
    with torch.no_grad():
        z = torch.randn([samples, G.z_dim], generator=g).to(device)
        w = G.mapping(z, torch.zeros([samples, G.c_dim], device=device))[:, 0].cpu()
    E.w_avg.copy_(w.mean(0))
    E.w_std.copy_(w.std(0).clamp_min(1e-4))
    if E.feedback:
        ws = E.w_avg.to(device).reshape(1, 1, -1).repeat(1, G.num_ws, 1)
        with torch.no_grad():
            E.avg_image.copy_(G.synthesis(ws, noise_mode="const", force_fp32=True)[0].cpu())
    return E


def _widens(src: torch.Size, dst: torch.Size) -> bool:
    """Whether a first-layer weight of shape ``src`` fits ``dst`` with more input channels."""
    return src[0] == dst[0] and src[2:] == dst[2:] and src[1] < dst[1]


def warm_start(E: Encoder, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy the weights of another encoder's ``state`` into ``E`` (same architecture up to the
    feedback input): a one-pass encoder's first layer fills the image channels of a feedback
    encoder, whose render channels start at zero, so ``E``'s first pass equals the source
    encoder. The statistics buffers (``w_avg``, ``w_std``, ``avg_image``) stay ``E``'s own.
    Returns the names of the tensors that were widened; raises ValueError on any other
    mismatch."""
    own = E.state_dict()
    keep = {"w_avg", "w_std", "avg_image"}
    missing = sorted(k for k in own if k not in state and k not in keep)
    extra = sorted(k for k in state if k not in own and k not in keep)
    if missing or extra:
        raise ValueError(f"different layers (missing {missing[:3]}, unexpected {extra[:3]})")
    widened = []
    with torch.no_grad():
        for k, dst in own.items():
            if k in keep:
                continue
            src = state[k].to(dst.dtype)
            if src.shape == dst.shape:
                dst.copy_(src)
            elif k == "fromrgb.weight" and _widens(src.shape, dst.shape):
                dst.zero_()
                dst[:, : src.shape[1]] = src
                widened.append(k)
            else:
                raise ValueError(f"{k} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    return widened


# ---------------------------------------------------------------------------------------------
# Degradations


def _gauss_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels ``[N, 2 * radius + 1]`` (sigma 0 gives a delta)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    k = torch.exp(-0.5 * (x[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    return k / k.sum(1, keepdim=True)


def blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with one ``sigma`` (pixels) per image, reflect-padded, separable."""
    n, c, h, w = img.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    radius = min(radius, h - 1, w - 1)
    k = _gauss_kernels(sigma.to(img.device, torch.float32), radius).to(img.dtype)
    k = k.repeat_interleave(c, 0)  # [n*c, taps]
    x = img.reshape(1, n * c, h, w)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k[:, None, None, :], groups=n * c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, k[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


def jpeg(img: torch.Tensor, quality: list[int]) -> torch.Tensor:
    """JPEG round trip of each image at its quality (on the CPU, through torchvision)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    u8 = ((img.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    out = [decode_jpeg(encode_jpeg(x, quality=int(q))) for x, q in zip(u8, quality, strict=True)]
    back = torch.stack(out).float() / 127.5 - 1
    return back.to(img.device, img.dtype)


def degrade(img: torch.Tensor, g: torch.Generator, cfg: Mapping[str, float]) -> torch.Tensor:
    """Make renders look like photos: per image, with probability ``prob`` each, exposure,
    contrast, saturation and colour-cast shifts (``colour``: the largest relative change),
    Gaussian blur (``blur``: the largest sigma in pixels), noise (``noise``: the largest std in
    [-1, 1] units) and a JPEG round trip (``jpeg_prob``, quality from ``jpeg_min`` to 95).
    Random numbers come from ``g`` (CPU), in a fixed order, so the result is a function of
    its state. ``cfg`` keys: prob, colour, blur, noise, jpeg_prob, jpeg_min."""
    n = img.shape[0]
    dev = img.device

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=g)

    p = float(cfg["prob"])
    on = (u(n, 4) < p).float()  # colour, blur, noise, jpeg (drawn always, used when on)
    amount = float(cfg["colour"])
    gain = 1 + amount * (2 * u(n, 3) - 1) * 0.5  # colour cast
    bright = amount * (2 * u(n) - 1) * 0.5
    contrast = 1 + amount * (2 * u(n) - 1)
    sat = 1 + amount * (2 * u(n) - 1)
    sigma = float(cfg["blur"]) * u(n) * on[:, 1]
    noise_std = float(cfg["noise"]) * u(n) * on[:, 2]
    noise = torch.randn(img.shape, generator=g)
    jpeg_on = u(n) < float(cfg["jpeg_prob"])
    quality = (float(cfg["jpeg_min"]) + (95 - float(cfg["jpeg_min"])) * u(n)).round().int()

    x = img
    c = on[:, 0].to(dev)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    gray = x.mean(dim=1, keepdim=True)
    y = gray + sat.to(dev)[:, None, None, None] * (x - gray)
    y = mean + contrast.to(dev)[:, None, None, None] * (y - mean)
    y = (y + 1) * gain.to(dev)[:, :, None, None] - 1 + bright.to(dev)[:, None, None, None]
    x = c * y + (1 - c) * x
    if float(sigma.max()) > 0.05:
        x = blur(x, sigma)
    x = x + noise_std.to(dev)[:, None, None, None] * noise.to(dev)
    x = x.clamp(-1, 1)
    if bool(jpeg_on.any()):
        idx = torch.nonzero(jpeg_on).flatten()
        x = x.clone()
        x[idx.to(dev)] = jpeg(x[idx.to(dev)], quality[idx].tolist())
    return x


# ---------------------------------------------------------------------------------------------
# Files


def save_encoder(
    E: Encoder,
    path: str | os.PathLike,
    generator: Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write the encoder as safetensors with ``toon`` metadata (atomically); ``generator`` names
    the generator file whose W it codes (``file``, ``sha256``)."""
    info = {
        "format_version": FORMAT_VERSION,
        "kind": KIND_ENCODER,
        "arch": E.arch,
        "generator": dict(generator),
        "training": dict(training or {}),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in E.state_dict().items()}
    meta = {"toon": json.dumps(info, sort_keys=True)}
    return atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=meta))


_ARCH_LIMITS = {
    "img_resolution": (8, 4096),
    "num_ws": (1, 64),
    "w_dim": (1, 8192),
    "channel_base": (1, 1 << 20),
    "channel_max": (1, 8192),
    "head_channels": (1, 1024),
    "hidden": (1, 1 << 16),
    "img_channels": (1, 4),
    "feedback": (0, 1),
    "passes": (1, 64),
}
_ARCH_DEFAULTS = {"feedback": 0, "passes": 1}  # keys that files of format 1 may lack


def _toon_info(path: Path) -> Any:
    """The parsed ``toon`` metadata of a safetensors file (None when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors encoder file ({error_line(e)})") from None
    try:
        return json.loads(meta.get("toon", "null"))
    except json.JSONDecodeError:
        return None


def is_encoder_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file whose metadata says it holds an encoder."""
    try:
        info = _toon_info(Path(path))
    except CheckpointError:
        return False
    return isinstance(info, dict) and info.get("kind") == KIND_ENCODER


def read_encoder_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``toon`` metadata of an encoder file (a :class:`CheckpointError` when it is none)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: encoder file not found (train one with toon-teacher encoder train)"
        )
    info = _toon_info(path)
    if not isinstance(info, dict) or info.get("kind") != KIND_ENCODER:
        kind = info.get("kind") if isinstance(info, dict) else None
        raise CheckpointError(
            f"{path}: holds {'a ' + str(kind) if kind else 'no toon metadata'}, not an encoder "
            "(toon-teacher encoder train writes one)"
        )
    arch = info.get("arch")
    if isinstance(arch, dict):
        arch = info["arch"] = {**_ARCH_DEFAULTS, **arch}
    if not isinstance(arch, dict) or set(arch) != set(_ARCH_LIMITS):
        raise CheckpointError(f"{path}: encoder metadata has a malformed arch")
    for key, (lo, hi) in _ARCH_LIMITS.items():
        v = arch[key]
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise CheckpointError(f"{path}: encoder arch {key}={v!r} is out of range")
    return info


def load_encoder(path: str | os.PathLike) -> Encoder:
    """Load an encoder file strictly, in eval mode; ``E.info`` holds its metadata."""
    info = read_encoder_info(path)
    try:
        E = Encoder(**info["arch"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    problem = state_mismatch(E.state_dict(), state)
    if problem:
        raise CheckpointError(f"{path}: encoder {problem}")
    E.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    E.info = info
    return E.eval().requires_grad_(False)


def check_pair(
    E: Encoder, G: torch.nn.Module, network: str | os.PathLike | None = None
) -> str | None:
    """Refuse an encoder whose codes do not fit ``G``; return a warning line when the file
    ``network`` (when given) is not the one the encoder was trained for (its sha256 differs),
    else None."""
    mine = (E.img_resolution, E.num_ws, E.w_dim)
    theirs = (G.img_resolution, G.num_ws, G.w_dim)
    if mine != theirs:
        raise CheckpointError(
            f"the encoder codes (resolution, num_ws, w_dim) = {mine} but "
            f"{network or 'the generator'} has {theirs}; train an encoder for this generator"
        )
    want = getattr(E, "info", {}).get("generator", {})
    if network is None or not want.get("sha256") or not Path(network).is_file():
        return None
    if file_sha256(network) != want["sha256"]:
        return (
            f"the encoder was trained for {want.get('file', '?')} (sha256 "
            f"{want['sha256'][:12]}), not {Path(network).name}; its codes may fit poorly"
        )
    return None


@torch.no_grad()
def encode_images(
    E: Encoder,
    images: np.ndarray,
    batch: int = 16,
    G: torch.nn.Module | None = None,
    passes: int | None = None,
) -> torch.Tensor:
    """W+ codes ``[N, num_ws, w_dim]`` (CPU float32) of HWC uint8 aligned faces at the
    encoder's resolution, in batches on the encoder's device, after ``passes`` (see
    :meth:`Encoder.invert`; ``G`` renders the codes between passes)."""
    dev = next(E.parameters()).device
    out = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[start : start + batch], dtype=np.uint8))
        x = x.permute(0, 3, 1, 2).to(dev).float() / 127.5 - 1
        out.append(E.invert(x[:, : E.img_channels], G, passes).float().cpu())
    return torch.cat(out) if out else torch.zeros([0, E.num_ws, E.w_dim])

"""The student's networks: image-to-image generators and the multi-scale PatchGAN discriminator.

Generators map an RGB image in [-1, 1] (NCHW float) to an RGB image in [-1, 1] (tanh output).
Any input whose height and width are multiples of the generator's ``stride`` works (the total
downsampling factor: ``2 ** levels`` for :class:`MobileUNet`, ``2 ** num_downs`` for
:class:`UNet`). Every op exports to ONNX at opset 17 (Conv, ConvTranspose, BatchNormalization
or InstanceNormalization, Relu/LeakyRelu, Resize, Add, Concat, Tanh); there is no
data-dependent control flow, so one trace serves every batch size and image size.

Architectures are named by a *preset* (a registry in the timm manner, :data:`GENERATOR_PRESETS`):

- ``mobile`` (default): :class:`MobileUNet` with depthwise-separable convolutions, 4 levels
  (stride 16), additive skips, bilinear upsampling, batch norm (folded into the convolutions for
  export by :func:`fold_batch_norm`), no dropout. Within the budget of 2.5 M parameters and
  3 GMACs at 256x256 (``bench/student.py`` prints the figures).
- ``small``: the same U-Net with ordinary 3x3 convolutions and fewer channels; on desktop GPUs and
  CPUs dense convolutions often run faster than depthwise ones at the same MACs.
- ``unet256``: the U-Net-256 generator of pix2pix (Isola et al. 2017): 8 stride-2 4x4 convolutions
  down to 1x1, transposed convolutions up, concatenated skips, 64 base channels, batch norm
  (stride 256); the quality reference. Dropout is off by default (``dropout=0.5`` gives the
  paper's), because the student should be a deterministic function.
- ``tiny``: a very small ``mobile`` for tests and CPU smoke runs.

A model file stores the preset name and every constructor argument (:func:`generator_arch`);
:func:`build_generator` rebuilds the module from that dict, classes come from a fixed table.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("batch", "instance", "none")
# MobileUNet's output: tanh of the head (the image), or the input plus the head, clipped (the
# image's change; the head starts at zero, so the untrained network is the identity)
OUTPUTS = ("tanh", "residual")
ACTIVATIONS = ("relu", "lrelu")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose from {', '.join(NORMS)}")


def _act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "lrelu":
        return nn.LeakyReLU(0.2, inplace=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {kind!r}; choose from {', '.join(ACTIVATIONS)}")


class ConvNormAct(nn.Module):
    """Convolution (or transposed convolution), normalisation, activation.

    The convolution has a bias only when there is no normalisation (a norm's shift replaces it);
    :func:`fold_batch_norm` folds a batch norm back into the convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        norm: str = "batch",
        act: str = "relu",
        transposed: bool = False,
        pad_mode: str = "zeros",
    ) -> None:
        super().__init__()
        padding = (kernel - 1) // 2 if padding is None else padding
        bias = norm == "none"
        if transposed:
            self.conv: nn.Module = nn.ConvTranspose2d(
                in_channels, out_channels, kernel, stride, padding, groups=groups, bias=bias
            )
        else:
            self.conv = nn.Conv2d(
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                groups=groups,
                bias=bias,
                padding_mode=pad_mode,
            )
        self.norm = _norm(norm, out_channels)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class SeparableConv(nn.Module):
    """Depthwise k x k convolution (with ``stride``) then pointwise 1x1, each with norm + act
    (MobileNet v1). ``separable=False`` gives one dense k x k convolution instead."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        separable: bool = True,
        norm: str = "batch",
        act: str = "relu",
        last_act: bool = True,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        out_act = act if last_act else "none"
        if separable:
            self.dw: nn.Module = ConvNormAct(
                in_channels, in_channels, kernel, stride, groups=in_channels, norm=norm, act=act
            )
            self.pw = ConvNormAct(in_channels, out_channels, 1, norm=norm, act=out_act)
        else:
            self.dw = nn.Identity()
            self.pw = ConvNormAct(in_channels, out_channels, kernel, stride, norm=norm, act=out_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class ResidualBlock(nn.Module):
    """``x + f(x)`` with f two (separable) 3x3 convolutions, no activation after the sum
    (the ResNet blocks of Johnson et al. and pix2pixHD)."""

    def __init__(self, channels: int, separable: bool, norm: str, act: str) -> None:
        super().__init__()
        self.conv0 = SeparableConv(channels, channels, 1, separable, norm, act)
        self.conv1 = SeparableConv(channels, channels, 1, separable, norm, act, last_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(self.conv0(x))


class MobileUNet(nn.Module):
    """A light U-Net: a full-resolution stem, ``L = len(channels) - 1`` stride-2 levels with
    residual blocks, residual blocks at the bottom, and a decoder that upsamples and merges the
    encoder feature of the same resolution.

    Args:
        in_channels: input image channels (3).
        out_channels: output image channels (3).
        channels: feature channels per level, level 0 at full resolution; the stride is
            ``2 ** (len(channels) - 1)``.
        enc_blocks: residual blocks after each downsampling, one count per level 1..L.
        mid_blocks: residual blocks at the lowest resolution (after ``enc_blocks[-1]``).
        dec_blocks: residual blocks after each merge, one count per level 0..L-1.
        separable: depthwise-separable convolutions (True) or dense 3x3 ones (False).
        norm: ``batch`` (default; fold it for export), ``instance`` or ``none``.
        act: ``relu`` (default) or ``lrelu`` (slope 0.2).
        skip: ``add`` (the upsampled decoder feature plus the encoder feature) or ``concat``
            (concatenate, then a separable conv back to the level's channels).
        upsample: ``bilinear`` (default, align_corners=False) or ``nearest``; the x2 resize
            comes after a 1x1 conv that reduces the channels to the next level's.
        stem_kernel: kernel of the full-resolution stem convolution (dense).
        output: ``tanh`` (default: the head's tanh is the image) or ``residual`` (the input
            plus the head, clipped to [-1, 1]: the network draws the image's change, and a
            zero-initialised head makes the untrained network the identity).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128, 192),
        enc_blocks: Sequence[int] = (0, 1, 1, 1),
        mid_blocks: int = 4,
        dec_blocks: Sequence[int] = (0, 1, 1, 1),
        separable: bool = True,
        norm: str = "batch",
        act: str = "relu",
        skip: str = "add",
        upsample: str = "bilinear",
        stem_kernel: int = 3,
        output: str = "tanh",
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        levels = len(channels) - 1
        if levels < 1:
            raise ValueError("MobileUNet needs at least two levels of channels")
        if len(enc_blocks) != levels or len(dec_blocks) != levels:
            raise ValueError(
                f"enc_blocks and dec_blocks need {levels} entries (one per level), got "
                f"{len(enc_blocks)} and {len(dec_blocks)}"
            )
        if skip not in ("add", "concat"):
            raise ValueError(f"skip must be 'add' or 'concat', got {skip!r}")
        if upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {upsample!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if output == "residual" and in_channels != out_channels:
            raise ValueError("a residual output needs as many output channels as input ones")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.levels = levels
        self.stride = 2**levels
        self.skip = skip
        self.upsample = upsample

        self.stem = ConvNormAct(in_channels, channels[0], stem_kernel, norm=norm, act=act)
        self.down = nn.ModuleList()
        for lvl in range(1, levels + 1):
            blocks: list[nn.Module] = [
                SeparableConv(channels[lvl - 1], channels[lvl], 2, separable, norm, act)
            ]
            n = enc_blocks[lvl - 1] + (mid_blocks if lvl == levels else 0)
            blocks += [ResidualBlock(channels[lvl], separable, norm, act) for _ in range(n)]
            self.down.append(nn.Sequential(*blocks))
        self.up = nn.ModuleList()  # up[i] takes level i + 1 to level i
        self.merge = nn.ModuleList()
        for lvl in range(levels):
            self.up.append(ConvNormAct(channels[lvl + 1], channels[lvl], 1, norm=norm, act=act))
            blocks = []
            if skip == "concat":
                blocks.append(SeparableConv(2 * channels[lvl], channels[lvl], 1, separable, norm))
            blocks += [
                ResidualBlock(channels[lvl], separable, norm, act) for _ in range(dec_blocks[lvl])
            ]
            self.merge.append(nn.Sequential(*blocks))
        self.head = nn.Conv2d(channels[0], out_channels, 3, padding=1)
        self.output = output
        if output == "residual":  # the untrained network changes nothing
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in, H, W]`` in [-1, 1] -> ``[N, out, H, W]`` in [-1, 1]; H and W multiples of
        :attr:`stride`."""
        feats = [self.stem(x)]
        for down in self.down:
            feats.append(down(feats[-1]))
        y = feats[-1]
        for lvl in reversed(range(self.levels)):
            y = self.up[lvl](y)
            if self.upsample == "bilinear":
                y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            else:
                y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = y + feats[lvl] if self.skip == "add" else torch.cat([y, feats[lvl]], dim=1)
            y = self.merge[lvl](y)
        if self.output == "residual":
            return (x + self.head(y)).clamp(-1.0, 1.0)
        return torch.tanh(self.head(y))


class UNet(nn.Module):
    """The pix2pix U-Net generator (Isola et al. 2017, appendix 6.1.1), written flat.

    Encoder ``C64-C128-C256-C512-C512-C512-C512-C512`` for ``num_downs=8``: 4x4 stride-2
    convolutions, LeakyReLU(0.2) before each but the first, no norm on the first and the
    innermost. Decoder: ReLU, 4x4 stride-2 transposed convolution, norm (none on the outermost,
    which ends in tanh), skips concatenated. ``dropout`` after the norm of the three innermost
    decoder layers (0.5 in the paper; 0 here by default).

    Args:
        in_channels, out_channels: image channels.
        base_channels: ``ngf`` (64).
        num_downs: stride-2 levels; the stride is ``2 ** num_downs`` (8: 256).
        max_channels: channel cap (512).
        norm: ``batch`` (the paper's) or ``instance`` or ``none``.
        dropout: dropout probability of the three innermost decoder layers.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 64,
        num_downs: int = 8,
        max_channels: int = 512,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_downs < 2:
            raise ValueError("UNet needs num_downs >= 2")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = 2**num_downs
        ch = [min(base_channels * 2**i, max_channels) for i in range(num_downs)]
        self.down = nn.ModuleList()
        for i in range(num_downs):
            cin = in_channels if i == 0 else ch[i - 1]
            layer_norm = "none" if i in (0, num_downs - 1) else norm
            act = "none" if i == 0 else "lrelu"
            self.down.append(_PreActConv(cin, ch[i], act, layer_norm, 0.0, transposed=False))
        self.up = nn.ModuleList()  # up[i] produces the resolution of down[i]'s input
        for i in range(num_downs):
            cin = ch[i] if i == num_downs - 1 else 2 * ch[i]
            cout = out_channels if i == 0 else ch[i - 1]
            layer_norm = "none" if i == 0 else norm
            drop = dropout if num_downs - 5 < i < num_downs - 1 else 0.0
            self.up.append(_PreActConv(cin, cout, "relu", layer_norm, drop, transposed=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in, H, W]`` in [-1, 1] -> ``[N, out, H, W]``; H, W multiples of
        :attr:`stride`."""
        feats = []
        for down in self.down:
            x = down(x)
            feats.append(x)
        y = feats[-1]
        for i in reversed(range(len(self.up))):
            if i != len(self.up) - 1:
                y = torch.cat([y, feats[i]], dim=1)
            y = self.up[i](y)
        return torch.tanh(y)


class _PreActConv(nn.Module):
    """Activation, 4x4 stride-2 (transposed) convolution, norm, optional dropout (pix2pix's
    U-Net block order)."""

    def __init__(
        self, cin: int, cout: int, act: str, norm: str, dropout: float, transposed: bool
    ) -> None:
        super().__init__()
        self.act = _act(act) if act != "none" else nn.Identity()
        self.act.inplace = False  # the input is a skip feature that is reused
        self.body = ConvNormAct(cin, cout, 4, 2, 1, norm=norm, act="none", transposed=transposed)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.body(self.act(x)))


# ---------------------------------------------------------------------------------------------
# Registry

GENERATOR_FAMILIES: dict[str, type[nn.Module]] = {"mobile_unet": MobileUNet, "unet": UNet}

GENERATOR_PRESETS: dict[str, dict[str, Any]] = {
    "mobile": dict(
        family="mobile_unet",
        channels=[16, 32, 96, 192, 320],
        enc_blocks=[0, 1, 2, 2],
        mid_blocks=6,
        dec_blocks=[0, 1, 1, 1],
        separable=True,
        norm="batch",
        act="relu",
        skip="add",
        upsample="bilinear",
    ),
    "small": dict(
        family="mobile_unet",
        channels=[16, 32, 64, 96, 128],
        enc_blocks=[0, 1, 1, 1],
        mid_blocks=4,
        dec_blocks=[0, 1, 1, 1],
        separable=False,
        norm="batch",
        act="relu",
        skip="add",
        upsample="bilinear",
    ),
    "unet256": dict(family="unet", base_channels=64, num_downs=8, norm="batch", dropout=0.0),
    "tiny": dict(
        family="mobile_unet",
        channels=[16, 32, 48, 64],
        enc_blocks=[0, 1, 1],
        mid_blocks=2,
        dec_blocks=[0, 1, 1],
        separable=True,
        norm="batch",
        act="relu",
        skip="add",
        upsample="bilinear",
    ),
}


def generator_arch(preset: str, **overrides: Any) -> dict[str, Any]:
    """The full arch dict of a preset: ``preset``, ``family`` and every constructor argument
    (defaults filled in), with ``overrides`` applied."""
    if preset not in GENERATOR_PRESETS:
        raise ValueError(
            f"unknown generator preset {preset!r}; choose from {', '.join(GENERATOR_PRESETS)}"
        )
    values = dict(GENERATOR_PRESETS[preset])
    values.update(overrides)
    family = values.pop("family")
    cls = GENERATOR_FAMILIES[family]
    import inspect

    arch: dict[str, Any] = {"preset": preset, "family": family}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        value = values.pop(name, param.default)
        arch[name] = list(value) if isinstance(value, tuple) else value
    if values:
        raise ValueError(f"{family} has no arguments {sorted(values)}")
    return arch


def build_generator(arch: dict[str, Any]) -> nn.Module:
    """Construct a generator from an arch dict (see :func:`generator_arch`), in train mode."""
    arch = dict(arch)
    arch.pop("preset", None)
    family = arch.pop("family", None)
    if family not in GENERATOR_FAMILIES:
        raise ValueError(
            f"unknown generator family {family!r}; known: {', '.join(GENERATOR_FAMILIES)}"
        )
    try:
        return GENERATOR_FAMILIES[family](**arch)
    except TypeError as e:
        raise ValueError(f"bad {family} arguments: {e}") from None


# ---------------------------------------------------------------------------------------------
# Export helpers


@torch.no_grad()
def fold_batch_norm(G: nn.Module) -> nn.Module:
    """A copy of ``G`` in eval mode with every batch norm folded into the convolution before it
    (``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``); the result
    computes the same function as ``G.eval()`` without BatchNormalization nodes."""
    G = copy.deepcopy(G).eval()
    for module in G.modules():
        if not isinstance(module, ConvNormAct) or not isinstance(module.norm, nn.BatchNorm2d):
            continue
        conv, bn = module.conv, module.norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * scale + bn.bias
        if isinstance(conv, nn.ConvTranspose2d):
            # weight [in, out / groups, k, k]; groups == 1 here
            conv.weight.mul_(scale.view(1, -1, 1, 1))
        else:
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(new_bias)
        module.norm = nn.Identity()
    return G


# ---------------------------------------------------------------------------------------------
# Discriminator


class PatchDiscriminator(nn.Module):
    """The 70x70 PatchGAN of pix2pix (``layers=3``): 4x4 convolutions, stride 2 for the first
    ``layers``, then two stride-1 ones, LeakyReLU(0.2), no norm on the first; channel count
    doubles per layer up to 512. Returns every layer's output (the last is the logit map), for
    feature matching."""

    def __init__(self, in_channels: int, channels: int, layers: int, norm: str) -> None:
        super().__init__()
        blocks = [ConvNormAct(in_channels, channels, 4, 2, 2, norm="none", act="lrelu")]
        ch = channels
        for _ in range(1, layers):
            nxt = min(ch * 2, 512)
            blocks.append(ConvNormAct(ch, nxt, 4, 2, 2, norm=norm, act="lrelu"))
            ch = nxt
        nxt = min(ch * 2, 512)
        blocks.append(ConvNormAct(ch, nxt, 4, 1, 2, norm=norm, act="lrelu"))
        blocks.append(ConvNormAct(nxt, 1, 4, 1, 2, norm="none", act="none"))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD's multi-scale discriminator: ``scales`` PatchGANs of the same architecture on the
    image downsampled by 1, 2, 4, ... (3x3 average pooling, stride 2, padding excluded).

    Conditional: the input is the source image and the (real or generated) target concatenated
    on channels, as in pix2pix.

    Args:
        in_channels: channels of (source, target) together (6).
        channels: first layer channels (``ndf``, 64).
        layers: stride-2 layers per PatchGAN (3: 70x70 receptive field).
        scales: number of PatchGANs (``num_D``, 3 in pix2pixHD).
        norm: ``instance`` (pix2pixHD's), ``batch`` or ``none``.
    """

    def __init__(
        self,
        in_channels: int = 6,
        channels: int = 64,
        layers: int = 3,
        scales: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if scales < 1 or layers < 1:
            raise ValueError("the discriminator needs at least one scale and one layer")
        self.arch = dict(
            in_channels=in_channels, channels=channels, layers=layers, scales=scales, norm=norm
        )
        self.nets = nn.ModuleList(
            PatchDiscriminator(in_channels, channels, layers, norm) for _ in range(scales)
        )

    def forward(self, src: torch.Tensor, img: torch.Tensor) -> list[list[torch.Tensor]]:
        """Features of every layer (last: logits) per scale, finest scale first."""
        x = torch.cat([src, img], dim=1)
        out = []
        for i, net in enumerate(self.nets):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(net(x))
        return out


# ---------------------------------------------------------------------------------------------
# Counting


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (buffers such as batch-norm statistics excluded)."""
    return int(sum(p.numel() for p in net.parameters()))


@torch.no_grad()
def count_macs(net: nn.Module, size: int = 256, channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1 and ``size x size``.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the FLOPs of
    convolutions, transposed convolutions and matrix products (2 per multiply-accumulate) from
    the shapes seen in a real forward; MACs are half of that. Normalisations, activations,
    additions and resizes are not counted (they are O(elements), under 2% here).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    x = torch.zeros([1, channels, size, size], device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        net(x)
    net.train(was_training)
    return int(counter.get_total_flops() // 2)


__all__ = [
    "GENERATOR_FAMILIES",
    "GENERATOR_PRESETS",
    "MobileUNet",
    "MultiscaleDiscriminator",
    "PatchDiscriminator",
    "UNet",
    "build_generator",
    "count_macs",
    "count_parameters",
    "fold_batch_norm",
    "generator_arch",
]

"""StyleGAN2-ADA generator and discriminator.

Module and parameter names equal the state-dict names of NVIDIA's stylegan2-ada-pytorch
snapshots (``synthesis.b64.conv0.affine.weight``, ``mapping.w_avg``, ``b4.fc.weight``...), so a
snapshot loads with a strict, rename-free ``load_state_dict``. Constructor arguments are flat and
explicit (see :class:`Generator` and :class:`Discriminator`); ``arch`` dicts with exactly these
keys are what model files record.

Layer-to-resolution map of the synthesis network (used by blending): block ``bK`` renders at
K x K. ``b4`` holds ``const``, ``conv1`` and ``torgb``; every other block holds ``conv0`` (the
2x upsampling conv from K/2 to K), ``conv1`` and ``torgb`` (``torgb`` only for architecture
``skip`` or the last block; ``skip`` for ``resnet``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from teacher import ops

DEFAULT_FILTER = (1, 3, 3, 1)


def _resolution_log2(resolution: int) -> int:
    log2 = int(round(math.log2(resolution)))
    if resolution < 4 or 2**log2 != resolution:
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    return log2


def channels_for(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: ``min(channel_base // resolution, channel_max)``."""
    return min(channel_base // resolution, channel_max)


# ---------------------------------------------------------------------------------------------
# Basic layers


class FullyConnectedLayer(nn.Module):
    """Dense layer with equalized learning rate.

    Stored weight is ``randn / lr_multiplier``; the effective weight is
    ``weight * lr_multiplier / sqrt(in_features)`` and the effective bias ``bias * lr_multiplier``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return ops.bias_act(x, b, act=self.activation)


class Conv2dLayer(nn.Module):
    """Convolution with equalized learning rate, optional FIR up/downsampling, bias and act.

    ``trainable=False`` stores weight and bias as buffers (same state-dict names), which is how
    frozen discriminator layers (FreezeD) are represented.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = DEFAULT_FILTER,
        conv_clamp: float | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", ops.make_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = ops.ACTIVATION_GAIN[activation]
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(b) if b is not None else None
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = ops.conv2d_resample(
            x,
            w.to(x.dtype),
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=(self.up == 1),
        )
        b = self.bias.to(x.dtype) if self.bias is not None else None
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


# ---------------------------------------------------------------------------------------------
# Mapping network


class MappingNetwork(nn.Module):
    """z (and the label c) -> w, broadcast to ``num_ws`` copies; tracks ``w_avg``.

    Args:
        z_dim: latent size (0 for the discriminator's label-only mapping).
        c_dim: label size (0 = unconditional).
        w_dim: intermediate latent size.
        num_ws: number of w copies to output (None: return [N, w_dim]).
        num_layers: dense layers (NVIDIA: 8; ``paper256`` and smaller configs: 2 or 8).
        embed_features: label embedding size (default ``w_dim``; 0 when ``c_dim == 0``).
        layer_features: hidden size (default ``w_dim``).
        activation: hidden activation.
        lr_multiplier: learning-rate multiplier of the dense layers (0.01).
        w_avg_beta: decay of the running ``w_avg`` (None: no ``w_avg`` buffer, no truncation).
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            layer = FullyConnectedLayer(
                features[i],
                features[i + 1],
                activation=activation,
                lr_multiplier=lr_multiplier,
            )
            setattr(self, f"fc{i}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        update_w_avg: bool | None = None,
    ) -> torch.Tensor:
        """Map z (and c) to ws ``[N, num_ws, w_dim]``.

        ``update_w_avg`` defaults to ``self.training``: the running average moves towards the
        batch mean with decay ``w_avg_beta``. Truncation lerps from ``w_avg`` towards w by
        ``truncation_psi`` for the first ``truncation_cutoff`` ws (all when None).
        """
        x = None
        if self.z_dim > 0:
            assert z is not None and z.shape[1:] == (self.z_dim,), f"z must be [N, {self.z_dim}]"
            x = ops.normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            assert c is not None and c.shape[1:] == (self.c_dim,), f"c must be [N, {self.c_dim}]"
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)

        if update_w_avg is None:
            update_w_avg = self.training
        if update_w_avg and self.w_avg_beta is not None and self.num_ws is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.num_ws is None or self.w_avg_beta is None:
                raise ValueError("truncation needs a mapping network that tracks w_avg")
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x = x.clone()
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x


# ---------------------------------------------------------------------------------------------
# Synthesis network


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling), per-pixel noise, bias and activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = DEFAULT_FILTER,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", ops.make_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = ops.ACTIVATION_GAIN[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1,
    ) -> torch.Tensor:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = (
                torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
                * self.noise_strength
            )
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = ops.modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=(self.up == 1),
            fused_modconv=fused_modconv,
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(
            x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv (no demodulation) from features to image channels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        )
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = ops.modulated_conv2d(
            x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv
        )
        return ops.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network (see the module docstring for its layers)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Sequence[float] = DEFAULT_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        use_noise: bool = True,
        activation: str = "lrelu",
    ) -> None:
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(
                f"synthesis architecture must be orig, skip or resnet: {architecture!r}"
            )
        self.in_channels = in_channels
        self.resolution = resolution
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", ops.make_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        layer_kw = dict(use_noise=use_noise, activation=activation, conv_clamp=conv_clamp)

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                up=2,
                resample_filter=resample_filter,
                **layer_kw,
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(
            out_channels,
            out_channels,
            w_dim,
            resolution,
            **layer_kw,
        )
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(
                out_channels,
                img_channels,
                w_dim,
                conv_clamp=conv_clamp,
            )
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels,
                out_channels,
                kernel_size=1,
                bias=False,
                up=2,
                resample_filter=resample_filter,
            )

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str = "random",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert ws.shape[1] == self.num_conv + self.num_torgb, "wrong number of ws for block"
        w_iter = iter(ws.unbind(dim=1))
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        fmt = (
            torch.channels_last
            if self.channels_last and not force_fp32
            else torch.contiguous_format
        )
        if fused_modconv is None:
            # Grouped (fused) convs only in inference, only where float16 cannot overflow
            # through the per-sample kernels, and for batches only on CUDA: CPU grouped convs
            # are about 3x slower than the unfused form (which agrees to ~1e-5).
            batched_ok = dtype == torch.float32 and ws.device.type == "cuda"
            fused_modconv = (not self.training) and (ws.shape[0] == 1 or batched_ok)

        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=fmt)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        else:
            x = x.to(dtype=dtype, memory_format=fmt)
            if self.architecture == "resnet":
                y = self.skip(x, gain=np.sqrt(0.5))
                x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
                x = self.conv1(
                    x,
                    next(w_iter),
                    noise_mode=noise_mode,
                    fused_modconv=fused_modconv,
                    gain=np.sqrt(0.5),
                )
                x = y + x
            else:
                x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
                x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)

        if img is not None:
            img = ops.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws ``[N, num_ws, w_dim]`` -> image ``[N, img_channels, R, R]`` (roughly in [-1, 1]).

    Block ``bK`` for K = 4, 8, ..., R. ``num_fp16_res`` highest resolutions (never below 8x8)
    run in float16 unless ``force_fp32``. Each block reads ``num_conv + num_torgb`` ws starting
    at its offset, and the offset advances by ``num_conv``: a block's torgb shares its w with
    the next block's conv0.
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        architecture: str = "skip",
        resample_filter: Sequence[float] = DEFAULT_FILTER,
        conv_clamp: float | None = None,
        fp16_channels_last: bool = False,
        use_noise: bool = True,
        activation: str = "lrelu",
    ) -> None:
        super().__init__()
        log2 = _resolution_log2(img_resolution)
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = channels_for(res // 2, channel_base, channel_max) if res > 4 else 0
            out_ch = channels_for(res, channel_base, channel_max)
            is_last = res == img_resolution
            block = SynthesisBlock(
                in_ch,
                out_ch,
                w_dim,
                res,
                img_channels,
                is_last,
                architecture=architecture,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                use_fp16=res >= fp16_resolution,
                fp16_channels_last=fp16_channels_last,
                use_noise=use_noise,
                activation=activation,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def block_ws(self, ws: torch.Tensor) -> list[torch.Tensor]:
        """Split ws into the slice each block reads (in block order)."""
        out = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            out.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv
        return out

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
    ) -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        x = img = None
        for res, cur_ws in zip(self.block_resolutions, self.block_ws(ws), strict=True):
            x, img = getattr(self, f"b{res}")(
                x,
                img,
                cur_ws,
                noise_mode=noise_mode,
                force_fp32=force_fp32,
                fused_modconv=fused_modconv,
            )
        return img


class Generator(nn.Module):
    """StyleGAN2-ADA generator: ``mapping`` (z, c -> ws) then ``synthesis`` (ws -> image).

    Args:
        z_dim: input latent size.
        c_dim: conditioning label size (0 = unconditional).
        w_dim: intermediate latent size.
        img_resolution: output resolution (power of two).
        img_channels: output channels (3).
        mapping_layers, mapping_embed_features, mapping_layer_features, mapping_activation,
            mapping_lr_multiplier, w_avg_beta: see :class:`MappingNetwork`.
        architecture: synthesis architecture, ``skip`` (default), ``orig`` or ``resnet``.
        channel_base, channel_max: feature maps ``min(channel_base // res, channel_max)``.
        num_fp16_res: number of highest resolutions that run in float16.
        conv_clamp: clamp conv outputs to +-``conv_clamp`` (times the layer gain); None = off.
        resample_filter: FIR taps for up/downsampling.
        use_noise: per-pixel noise inputs.
        activation: synthesis activation.
        fp16_channels_last: channels-last memory format in float16 blocks.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int = 3,
        mapping_layers: int = 8,
        mapping_embed_features: int | None = None,
        mapping_layer_features: int | None = None,
        mapping_activation: str = "lrelu",
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.995,
        architecture: str = "skip",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        resample_filter: Sequence[float] = DEFAULT_FILTER,
        use_noise: bool = True,
        activation: str = "lrelu",
        fp16_channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.arch = dict(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_layers=mapping_layers,
            mapping_embed_features=mapping_embed_features,
            mapping_layer_features=mapping_layer_features,
            mapping_activation=mapping_activation,
            mapping_lr_multiplier=mapping_lr_multiplier,
            w_avg_beta=w_avg_beta,
            architecture=architecture,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            resample_filter=list(resample_filter),
            use_noise=use_noise,
            activation=activation,
            fp16_channels_last=fp16_channels_last,
        )
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim,
            img_resolution,
            img_channels,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            architecture=architecture,
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
            fp16_channels_last=fp16_channels_last,
            use_noise=use_noise,
            activation=activation,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim,
            c_dim,
            w_dim,
            self.num_ws,
            num_layers=mapping_layers,
            embed_features=mapping_embed_features,
            layer_features=mapping_layer_features,
            activation=mapping_activation,
            lr_multiplier=mapping_lr_multiplier,
            w_avg_beta=w_avg_beta,
        )

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
    ) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(
            ws, noise_mode=noise_mode, force_fp32=force_fp32, fused_modconv=fused_modconv
        )


# ---------------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(nn.Module):
    """One resolution of the discriminator: (fromrgb), conv0, conv1 with 2x down, (skip)."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        first_layer_idx: int,
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter: Sequence[float] = DEFAULT_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        freeze_layers: int = 0,
    ) -> None:
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(
                f"discriminator architecture must be orig, skip or resnet: {architecture!r}"
            )
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", ops.make_filter(resample_filter))
        self.num_layers = 0

        def trainable() -> bool:
            # Layers are numbered from the input side; the first ``freeze_layers`` are frozen.
            idx = first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(
                img_channels,
                tmp_channels,
                kernel_size=1,
                activation=activation,
                trainable=trainable(),
                conv_clamp=conv_clamp,
            )
        self.conv0 = Conv2dLayer(
            tmp_channels,
            tmp_channels,
            kernel_size=3,
            activation=activation,
            trainable=trainable(),
            conv_clamp=conv_clamp,
        )
        self.conv1 = Conv2dLayer(
            tmp_channels,
            out_channels,
            kernel_size=3,
            activation=activation,
            down=2,
            trainable=trainable(),
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        if architecture == "resnet":
            self.skip = Conv2dLayer(
                tmp_channels,
                out_channels,
                kernel_size=1,
                bias=False,
                down=2,
                trainable=trainable(),
                resample_filter=resample_filter,
            )

    def forward(
        self, x: torch.Tensor | None, img: torch.Tensor | None, force_fp32: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        dtype = torch.float16 if self.use_fp16 and not force_fp32 else torch.float32
        fmt = (
            torch.channels_last
            if self.channels_last and not force_fp32
            else torch.contiguous_format
        )
        if x is not None:
            x = x.to(dtype=dtype, memory_format=fmt)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=fmt)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = (
                ops.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
            )
        if self.architecture == "resnet":
            y = self.skip(x, gain=np.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=np.sqrt(0.5))
            x = y + x
        else:
            x = self.conv0(x)
            x = self.conv1(x)
        return x, img


class MinibatchStdLayer(nn.Module):
    """Module wrapper of :func:`teacher.ops.minibatch_std`."""

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.minibatch_std(x, self.group_size, self.num_channels)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: (fromrgb), minibatch std, conv, fc, out (and label projection)."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.cmap_dim = cmap_dim
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(
                img_channels, in_channels, kernel_size=1, activation=activation
            )
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
            if mbstd_num_channels > 0
            else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            kernel_size=3,
            activation=activation,
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(
            in_channels * resolution**2, in_channels, activation=activation
        )
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(
        self, x: torch.Tensor, img: torch.Tensor | None, cmap: torch.Tensor | None
    ) -> torch.Tensor:
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(torch.float32))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / np.sqrt(self.cmap_dim))
        return x


class Discriminator(nn.Module):
    """StyleGAN2-ADA discriminator: image (and label) -> one logit per sample.

    Args:
        c_dim: label size (0 = unconditional; otherwise projection conditioning via ``mapping``).
        img_resolution, img_channels: input image shape.
        architecture: ``resnet`` (default), ``orig`` or ``skip``.
        channel_base, channel_max, num_fp16_res, conv_clamp, resample_filter: as in
            :class:`Generator`.
        cmap_dim: label projection size (default: channels at 4x4).
        activation: activation of every layer.
        mbstd_group_size, mbstd_num_channels: minibatch-std settings of the epilogue.
        mapping_layers, mapping_embed_features, mapping_layer_features, mapping_lr_multiplier:
            the label mapping network (used when ``c_dim > 0``).
        freeze_layers: the first N layers from the input side are frozen (FreezeD).
        fp16_channels_last: channels-last memory format in float16 blocks.
    """

    def __init__(
        self,
        c_dim: int,
        img_resolution: int,
        img_channels: int = 3,
        architecture: str = "resnet",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        cmap_dim: int | None = None,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = DEFAULT_FILTER,
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        mapping_layers: int = 8,
        mapping_embed_features: int | None = None,
        mapping_layer_features: int | None = None,
        mapping_lr_multiplier: float = 0.01,
        freeze_layers: int = 0,
        fp16_channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.arch = dict(
            c_dim=c_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            architecture=architecture,
            channel_base=channel_base,
            channel_max=channel_max,
            num_fp16_res=num_fp16_res,
            conv_clamp=conv_clamp,
            cmap_dim=cmap_dim,
            activation=activation,
            resample_filter=list(resample_filter),
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            mapping_layers=mapping_layers,
            mapping_embed_features=mapping_embed_features,
            mapping_layer_features=mapping_layer_features,
            mapping_lr_multiplier=mapping_lr_multiplier,
            freeze_layers=freeze_layers,
            fp16_channels_last=fp16_channels_last,
        )
        log2 = _resolution_log2(img_resolution)
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(log2, 2, -1)]
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        ch = {r: channels_for(r, channel_base, channel_max) for r in self.block_resolutions + [4]}
        if cmap_dim is None:
            cmap_dim = ch[4]
        if c_dim == 0:
            cmap_dim = 0
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(
                ch[res] if res < img_resolution else 0,
                ch[res],
                ch[res // 2],
                res,
                img_channels,
                first_layer_idx=layer_idx,
                architecture=architecture,
                activation=activation,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                use_fp16=res >= fp16_resolution,
                fp16_channels_last=fp16_channels_last,
                freeze_layers=freeze_layers,
            )
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(
                0,
                c_dim,
                cmap_dim,
                None,
                num_layers=mapping_layers,
                embed_features=mapping_embed_features,
                layer_features=mapping_layer_features,
                activation="lrelu",
                lr_multiplier=mapping_lr_multiplier,
                w_avg_beta=None,
            )
        self.b4 = DiscriminatorEpilogue(
            ch[4],
            cmap_dim,
            4,
            img_channels,
            architecture=architecture,
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            activation=activation,
            conv_clamp=conv_clamp,
        )

    def forward(
        self, img: torch.Tensor, c: torch.Tensor | None = None, force_fp32: bool = False
    ) -> torch.Tensor:
        expected = (self.img_channels, self.img_resolution, self.img_resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(
                f"images must be [N, {', '.join(map(str, expected))}], got {tuple(img.shape)}"
            )
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)

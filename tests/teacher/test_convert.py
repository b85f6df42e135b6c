"""Import of rosinality ``.pt`` checkpoints and NVIDIA TensorFlow pickles (``teacher.convert``).

Each foreign format has a small *writer* here that turns one of our random networks into that
format, with every layout change inverted by hand (independently of ``teacher/convert.py``).
Reading the file back must give the same tensors bit for bit, the same images and D logits.

A round trip through our own writer cannot catch a convention that writer and reader both get
wrong, so the ``*_layer_matches_*`` tests also rebuild the foreign layers from their published
source (rosinality ``model.py``: ``ModulatedConv2d``/``StyledConv``; NVIDIA
``dnnlib/tflib/ops/upfirdn_2d.py``: ``upsample_conv_2d``/``conv_downsample_2d`` and
``training/networks.py``: ``modulated_conv2d_layer``) and run them on the *foreign* tensors,
against our layers holding the imported weights.

Tolerances: tensors exact (``torch.equal``); images and logits atol 1e-5 (float32, same
weights); foreign-layer rebuilds atol 1e-5 (different op order).
"""

from __future__ import annotations

import argparse
import copy
import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from teacher import CheckpointError, load_discriminator, load_generator
from teacher.convert import infer_channel_base_max
from teacher.io import read_networks
from teacher.networks import Discriminator, Generator, channels_for
from teacher.spec import KIND_DISCRIMINATOR, KIND_GENERATOR
from tests.conftest import randomize_

ATOL = 1e-5
ARCH_KEYS = (
    "z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_layers",
    "mapping_lr_multiplier", "architecture", "channel_base", "channel_max", "num_fp16_res",
    "conv_clamp", "resample_filter", "activation", "use_noise",
)  # fmt: skip
D_ARCH_KEYS = (
    "c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
    "num_fp16_res", "conv_clamp", "activation", "resample_filter", "mbstd_group_size",
    "mbstd_num_channels",
)  # fmt: skip
D_MAPPING_KEYS = ("cmap_dim", "mapping_layers", "mapping_lr_multiplier")  # only when c_dim > 0


# ---------------------------------------------------------------------------------------------
# Our networks (random, with non-zero biases, noise strengths and w_avg)


@torch.no_grad()
def _generator(seed: int, **kw) -> Generator:
    torch.manual_seed(seed)
    arch = dict(z_dim=64, c_dim=0, w_dim=64, img_resolution=32, mapping_layers=2)
    arch.update(channel_base=1024, channel_max=64)  # 64 channels up to 16 px, 32 at 32 px
    arch.update(kw)
    G = randomize_(Generator(**arch).eval(), seed)
    G.mapping.w_avg.copy_(torch.randn(G.w_dim))
    return G


@torch.no_grad()
def _discriminator(seed: int, **kw) -> Discriminator:
    torch.manual_seed(seed)
    arch = dict(c_dim=0, img_resolution=32, channel_base=1024, channel_max=64)
    arch.update(kw)
    return randomize_(Discriminator(**arch).eval(), seed)


@torch.no_grad()
def _perturbed(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy with different parameters and the same buffers, like G next to G_ema."""
    out = copy.deepcopy(net)
    g = torch.Generator().manual_seed(seed)
    for p in out.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return out


def _labels(c_dim: int, n: int = 4) -> torch.Tensor | None:
    if c_dim == 0:
        return None
    c = torch.zeros([n, c_dim])
    c[torch.arange(n), torch.arange(n) % c_dim] = 1
    return c


@torch.no_grad()
def _images(G: Generator) -> torch.Tensor:
    z = torch.randn([4, G.z_dim], generator=torch.Generator().manual_seed(123))
    return G(z, _labels(G.c_dim), noise_mode="const", force_fp32=True)


def _assert_same_state(state: dict[str, torch.Tensor], net: torch.nn.Module) -> None:
    expected = net.state_dict()
    assert sorted(state) == sorted(expected)
    for name, t in expected.items():
        assert torch.equal(state[name], t), f"{name} differs after import"


def _assert_arch(arch: dict, net: torch.nn.Module, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert arch[key] == net.arch[key], f"arch {key}: {arch[key]!r} != {net.arch[key]!r}"


def _fir(x: torch.Tensor, k: torch.Tensor, pad: int) -> torch.Tensor:
    """Depthwise correlation with a symmetric 2-D filter after zero padding."""
    c = x.shape[1]
    return F.conv2d(F.pad(x, [pad] * 4), k.to(x.dtype).expand(c, 1, *k.shape), groups=c)


BINOMIAL = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


# ---------------------------------------------------------------------------------------------
# infer_channel_base_max


@pytest.mark.parametrize(
    "channels, expected",
    [
        # NVIDIA 1024 px (channel_base 32768, channel_max 512 = rosinality multiplier 2)
        ({4 * 2**k: min(32768 // (4 * 2**k), 512) for k in range(9)}, (32768, 512)),
        # rosinality channel_multiplier 1 at 256 px
        ({4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}, (16384, 512)),
        ({4: 64, 8: 64, 16: 64, 32: 32}, (1024, 64)),
        # every resolution at channel_max: any base >= 512 fits; the smallest power of two wins
        ({4: 32, 8: 32, 16: 32}, (512, 32)),
    ],
)
def test_infer_channel_base_max(channels, expected):
    base, cmax = infer_channel_base_max(channels)
    assert (base, cmax) == expected
    assert all(channels_for(r, base, cmax) == c for r, c in channels.items())


@pytest.mark.parametrize(
    "channels",
    [
        {4: 64, 8: 16, 16: 32},  # grows with resolution
        {4: 512, 8: 300, 16: 128},  # 8 px needs base 2400..2407, 16 px needs 2048..2063
        {},
    ],
)
def test_infer_channel_base_max_rejects_impossible(channels):
    with pytest.raises(CheckpointError, match="channel"):
        infer_channel_base_max(channels)


# ---------------------------------------------------------------------------------------------
# rosinality/stylegan2-pytorch writer (model.py names and shapes)

ROSINALITY_BLUR = BINOMIAL * 4  # make_kernel([1, 3, 3, 1]) * factor**2 (Blur and Upsample)


def _rosinality_state(G: Generator) -> dict[str, torch.Tensor]:
    """Our skip generator as a rosinality ``Generator.state_dict()``."""
    sd = {k: v.detach().clone() for k, v in G.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(G.mapping.num_layers):  # style.0 is PixelNorm (no tensors)
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    out["input.input"] = sd["synthesis.b4.const"].unsqueeze(0)
    noise_idx = iter(range(100))

    def styled_conv(theirs: str, ours: str, up: bool) -> None:
        out[f"{theirs}.conv.weight"] = sd[f"{ours}.weight"].unsqueeze(0)
        out[f"{theirs}.conv.modulation.weight"] = sd[f"{ours}.affine.weight"]
        out[f"{theirs}.conv.modulation.bias"] = sd[f"{ours}.affine.bias"]
        out[f"{theirs}.noise.weight"] = sd[f"{ours}.noise_strength"].reshape(1)
        out[f"{theirs}.activate.bias"] = sd[f"{ours}.bias"]
        out[f"noises.noise_{next(noise_idx)}"] = sd[f"{ours}.noise_const"][None, None]
        if up:
            out[f"{theirs}.conv.blur.kernel"] = ROSINALITY_BLUR.clone()

    def to_rgb(theirs: str, ours: str, up: bool) -> None:
        out[f"{theirs}.conv.weight"] = sd[f"{ours}.weight"].unsqueeze(0)
        out[f"{theirs}.conv.modulation.weight"] = sd[f"{ours}.affine.weight"]
        out[f"{theirs}.conv.modulation.bias"] = sd[f"{ours}.affine.bias"]
        out[f"{theirs}.bias"] = sd[f"{ours}.bias"].reshape(1, -1, 1, 1)
        if up:
            out[f"{theirs}.upsample.kernel"] = ROSINALITY_BLUR.clone()

    styled_conv("conv1", "synthesis.b4.conv1", up=False)
    to_rgb("to_rgb1", "synthesis.b4.torgb", up=False)
    for k, res in enumerate(G.synthesis.block_resolutions[1:]):
        styled_conv(f"convs.{2 * k}", f"synthesis.b{res}.conv0", up=True)
        styled_conv(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", up=False)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb", up=True)
    return out


def _rosinality_args(G: Generator) -> argparse.Namespace:
    return argparse.Namespace(size=G.img_resolution, latent=G.w_dim, n_mlp=2, channel_multiplier=2)


@pytest.fixture(scope="module")
def rosinality(tmp_path_factory):
    G_ema = _generator(seed=1)
    G = _perturbed(G_ema, seed=2)
    ckpt = {
        "g": _rosinality_state(G),
        "d": {"convs.0.0.weight": torch.randn(32, 3, 1, 1), "final_linear.1.bias": torch.zeros(1)},
        "g_ema": _rosinality_state(G_ema),
        "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99)}]},
        "args": _rosinality_args(G_ema),
        "latent_avg": G_ema.mapping.w_avg.clone().unsqueeze(0),  # mean_latent() gives [1, w_dim]
    }
    path = tmp_path_factory.mktemp("rosinality") / "020000.pt"
    torch.save(ckpt, path)
    return dict(path=path, G_ema=G_ema, G=G, ckpt=ckpt)


def test_rosinality_round_trip(rosinality):
    specs = read_networks(rosinality["path"])
    assert sorted(specs) == ["G", "G_ema"]  # rosinality's d is skipped
    for key in ("G_ema", "G"):
        spec, net = specs[key], rosinality[key]
        assert spec.kind == KIND_GENERATOR
        _assert_arch(spec.arch, net, ARCH_KEYS)
        _assert_same_state(spec.state, net)
        assert "w_avg" not in spec.source
    G = load_generator(rosinality["path"])
    torch.testing.assert_close(_images(G), _images(rosinality["G_ema"]), atol=ATOL, rtol=0)


@torch.no_grad()
def test_rosinality_layer_matches_rosinality_ops(rosinality):
    """rosinality StyledConv(upsample=True), non-fused path of ModulatedConv2d, on its own
    tensors: modulate, conv_transpose2d with the *unflipped* weight, Blur(pad=(1, 1)),
    demodulate, add noise, FusedLeakyReLU. Then ToRGB: modulate (no demod), 1x1 conv, bias."""
    sd = rosinality["ckpt"]["g_ema"]
    G = load_generator(rosinality["path"])
    w = torch.randn([2, G.w_dim], generator=torch.Generator().manual_seed(5))
    x = torch.randn([2, 64, 4, 4], generator=torch.Generator().manual_seed(6))

    weight = sd["convs.0.conv.weight"][0] / math.sqrt(64 * 9)  # scale = 1/sqrt(fan_in)
    style = F.linear(w, sd["convs.0.conv.modulation.weight"] / math.sqrt(G.w_dim))
    style = style + sd["convs.0.conv.modulation.bias"]
    demod = ((weight[None] * style[:, None, :, None, None]).square().sum([2, 3, 4]) + 1e-8).rsqrt()
    y = F.conv_transpose2d(x * style[:, :, None, None], weight.transpose(0, 1), stride=2)
    y = _fir(y, sd["convs.0.conv.blur.kernel"], pad=1) * demod[:, :, None, None]
    y = y + sd["convs.0.noise.weight"] * sd["noises.noise_1"]
    ref = _lrelu(y + sd["convs.0.activate.bias"][None, :, None, None])
    ours = G.synthesis.b8.conv0(x, w, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)

    style = F.linear(w, sd["to_rgbs.0.conv.modulation.weight"] / math.sqrt(G.w_dim))
    style = style + sd["to_rgbs.0.conv.modulation.bias"]
    weight = sd["to_rgbs.0.conv.weight"][0] / math.sqrt(ours.shape[1])
    ref = F.conv2d(ours * style[:, :, None, None], weight) + sd["to_rgbs.0.bias"]
    torch.testing.assert_close(G.synthesis.b8.torgb(ours, w), ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_rosinality_without_latent_avg_estimates_w_avg(rosinality, tmp_path):
    """rosinality's train.py saves no latent_avg: w_avg is the mean of 10000 mapped z (seed 0)."""
    G_ema = rosinality["G_ema"]
    path = tmp_path / "no_latent_avg.pt"
    torch.save({"g_ema": _rosinality_state(G_ema), "args": _rosinality_args(G_ema)}, path)
    spec = read_networks(path)["G_ema"]
    assert spec.source["w_avg"] == "estimated"
    z = torch.randn([10000, G_ema.z_dim], generator=torch.Generator().manual_seed(0))
    expected = G_ema.mapping(z, None, update_w_avg=False)[:, 0].mean(dim=0)
    torch.testing.assert_close(spec.state["mapping.w_avg"], expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(expected, G_ema.mapping.w_avg)  # not just the original buffer
    # Everything else still arrives unchanged.
    for name, t in G_ema.state_dict().items():
        if name != "mapping.w_avg":
            assert torch.equal(spec.state[name], t), name


def test_rosinality_without_g_ema_is_refused(rosinality, tmp_path):
    path = tmp_path / "g_only.pt"
    torch.save({"g": rosinality["ckpt"]["g"], "args": rosinality["ckpt"]["args"]}, path)
    with pytest.raises(CheckpointError, match="g_ema"):
        read_networks(path)


def test_rosinality_wrong_blur_is_refused(rosinality, tmp_path):
    state = dict(rosinality["ckpt"]["g_ema"])
    state["convs.0.conv.blur.kernel"] = torch.full([4, 4], 0.25)  # box filter
    path = tmp_path / "box.pt"
    torch.save({"g_ema": state}, path)
    with pytest.raises(CheckpointError, match="convs.0.conv.blur.kernel"):
        read_networks(path)


# ---------------------------------------------------------------------------------------------
# NVIDIA TensorFlow writer: (G, D, Gs) of dnnlib.tflib.network.Network, variables in TF layout


def _tf_conv(w: torch.Tensor, flip: bool = False) -> np.ndarray:
    """Ours [out, in, kh, kw] -> TF [kh, kw, in, out]. ``flip``: TF's upsampling convs flip the
    kernel before their transposed conv; ours do not."""
    a = w.detach().numpy()
    if flip:
        a = a[:, :, ::-1, ::-1]
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0))


def _tf_dense(w: torch.Tensor) -> np.ndarray:  # ours [out, in] -> TF [in, out]
    return np.ascontiguousarray(w.detach().numpy().T)


def _a(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().copy()


def _tf_generator_vars(G: Generator) -> dict[str, dict[str, np.ndarray]]:
    """Variables of TF ``G_main`` (top), ``G_mapping`` and ``G_synthesis`` for our generator."""
    sd = G.state_dict()
    top = {"dlatent_avg": _a(sd["mapping.w_avg"]), "lod": np.float32(0)}
    mapping = {}
    if G.c_dim:
        mapping["LabelEmbed/weight"] = _tf_dense(sd["mapping.embed.weight"])
        mapping["LabelEmbed/bias"] = _a(sd["mapping.embed.bias"])
    for i in range(G.mapping.num_layers):
        mapping[f"Dense{i}/weight"] = _tf_dense(sd[f"mapping.fc{i}.weight"])
        mapping[f"Dense{i}/bias"] = _a(sd[f"mapping.fc{i}.bias"])
    syn = {"4x4/Const/const": _a(sd["synthesis.b4.const"])[None]}
    layer_idx = iter(range(100))  # TF numbers noise inputs by conv layer, from 4x4 up

    def modconv(scope: str, ours: str, flip: bool = False) -> None:
        syn[f"{scope}/weight"] = _tf_conv(sd[f"{ours}.weight"], flip)
        syn[f"{scope}/mod_weight"] = _tf_dense(sd[f"{ours}.affine.weight"])
        syn[f"{scope}/mod_bias"] = _a(sd[f"{ours}.affine.bias"]) - np.float32(1)  # TF adds 1
        syn[f"{scope}/noise_strength"] = np.float32(sd[f"{ours}.noise_strength"].item())
        syn[f"{scope}/bias"] = _a(sd[f"{ours}.bias"])
        syn[f"noise{next(layer_idx)}"] = _a(sd[f"{ours}.noise_const"])[None, None]

    def to_rgb(scope: str, ours: str) -> None:
        if f"{ours}.weight" in sd:
            syn[f"{scope}/weight"] = _tf_conv(sd[f"{ours}.weight"])
            syn[f"{scope}/mod_weight"] = _tf_dense(sd[f"{ours}.affine.weight"])
            syn[f"{scope}/mod_bias"] = _a(sd[f"{ours}.affine.bias"]) - np.float32(1)
            syn[f"{scope}/bias"] = _a(sd[f"{ours}.bias"])

    modconv("4x4/Conv", "synthesis.b4.conv1")
    to_rgb("4x4/ToRGB", "synthesis.b4.torgb")
    for res in G.synthesis.block_resolutions[1:]:
        modconv(f"{res}x{res}/Conv0_up", f"synthesis.b{res}.conv0", flip=True)
        modconv(f"{res}x{res}/Conv1", f"synthesis.b{res}.conv1")
        to_rgb(f"{res}x{res}/ToRGB", f"synthesis.b{res}.torgb")
        if f"synthesis.b{res}.skip.weight" in sd:
            syn[f"{res}x{res}/Skip/weight"] = _tf_conv(sd[f"synthesis.b{res}.skip.weight"], True)
    return dict(top=top, mapping=mapping, synthesis=syn)


def _tf_discriminator_vars(D: Discriminator) -> dict[str, np.ndarray]:
    sd = D.state_dict()
    v = {}

    def conv(scope: str, ours: str) -> None:
        if f"{ours}.weight" in sd:
            v[f"{scope}/weight"] = _tf_conv(sd[f"{ours}.weight"])  # no flip: correlations
            if f"{ours}.bias" in sd:
                v[f"{scope}/bias"] = _a(sd[f"{ours}.bias"])

    def dense(scope: str, ours: str) -> None:
        v[f"{scope}/weight"] = _tf_dense(sd[f"{ours}.weight"])
        v[f"{scope}/bias"] = _a(sd[f"{ours}.bias"])

    for res in D.block_resolutions:
        conv(f"{res}x{res}/FromRGB", f"b{res}.fromrgb")
        conv(f"{res}x{res}/Conv0", f"b{res}.conv0")
        conv(f"{res}x{res}/Conv1_down", f"b{res}.conv1")
        conv(f"{res}x{res}/Skip", f"b{res}.skip")
    conv("4x4/FromRGB", "b4.fromrgb")
    conv("4x4/Conv", "b4.conv")
    dense("4x4/Dense0", "b4.fc")
    dense("Output", "b4.out")
    if D.c_dim:
        dense("LabelEmbed", "mapping.embed")
        for i in range(D.mapping.num_layers):
            dense(f"Mapping{i}", f"mapping.fc{i}")
    return v


def _write_tf_pickle(
    path: Path, G: dict, D: dict, Gs: dict, g_kwargs: dict, d_kwargs: dict, d_func: str
) -> None:
    """Pickle ``(G, D, Gs)`` as NVIDIA's TF code did. Stand-ins for ``dnnlib.tflib.network.
    Network`` and ``dnnlib.util.EasyDict`` exist in ``sys.modules`` only while dumping, so the
    pickle records those global names; the reader must never need (or run) them."""

    class Network:
        def __init__(self, state: dict) -> None:
            self._state = state

        def __getstate__(self) -> dict:
            return self._state

    class EasyDict(dict):
        pass

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"

    def net(name: str, func: str, kwargs: dict, variables: dict, **components) -> Network:
        return Network(
            {
                "version": 4,
                "name": name,
                "static_kwargs": EasyDict(kwargs),
                "components": EasyDict(components),
                "build_module_src": "raise SystemExit('must never run')",
                "build_func_name": func,
                "variables": list(variables.items()),
            }
        )

    def generator(name: str, v: dict) -> Network:
        mapping = net("G_mapping", "G_mapping", {**g_kwargs, "dlatent_broadcast": 8}, v["mapping"])
        synthesis = net("G_synthesis", "G_synthesis", g_kwargs, v["synthesis"])
        return net(name, "G_main", g_kwargs, v["top"], mapping=mapping, synthesis=synthesis)

    names = ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network", "dnnlib.util")
    modules = {n: types.ModuleType(n) for n in names}
    modules["dnnlib.tflib.network"].Network = Network
    modules["dnnlib.util"].EasyDict = EasyDict
    with pytest.MonkeyPatch.context() as mp:
        for name, module in modules.items():
            mp.setitem(sys.modules, name, module)
        obj = (generator("G", G), net("D", d_func, d_kwargs, D), generator("Gs", Gs))
        data = pickle.dumps(obj, protocol=4)
    assert "dnnlib.tflib.network" not in sys.modules
    path.write_bytes(data)


TF_CASES = {
    # StyleGAN2 (config F): skip G, resnet D_stylegan2 (mbstd group 4 by default), few kwargs.
    "stylegan2": dict(
        g=dict(),
        d=dict(),
        g_kwargs=dict(
            num_channels=3,
            resolution=32,
            label_size=0,
            fmap_base=512,
            fmap_max=64,
            mapping_layers=2,
            truncation_psi=0.5,
        ),
        d_kwargs=dict(num_channels=3, resolution=32, label_size=0, fmap_base=512, fmap_max=64),
        d_func="D_stylegan2",
    ),
    # StyleGAN2-ADA TF, conditional: resnet G, skip D_main with projection labels, clamp 256.
    "ada-conditional": dict(
        g=dict(c_dim=3, architecture="resnet", conv_clamp=256),
        d=dict(
            c_dim=3,
            architecture="skip",
            conv_clamp=256,
            mbstd_group_size=2,
            mapping_layers=1,
            mapping_lr_multiplier=0.1,
        ),
        g_kwargs=dict(
            num_channels=3,
            resolution=32,
            label_size=3,
            fmap_base=512,
            fmap_max=64,
            mapping_layers=2,
            architecture="resnet",
            conv_clamp=256,
            num_fp16_res=4,
        ),
        d_kwargs=dict(
            num_channels=3,
            resolution=32,
            label_size=3,
            fmap_base=512,
            fmap_max=64,
            architecture="skip",
            conv_clamp=256,
            num_fp16_res=4,
            mbstd_group_size=2,
            mapping_layers=1,
        ),
        d_func="D_main",
    ),
}


@pytest.fixture(scope="module", params=sorted(TF_CASES))
def tf_case(request, tmp_path_factory):
    case = TF_CASES[request.param]
    Gs = _generator(seed=3, **case["g"])
    G = _perturbed(Gs, seed=4)
    D = _discriminator(seed=5, **case["d"])
    path = tmp_path_factory.mktemp("tf") / f"network-{request.param}.pkl"
    tf = dict(G=_tf_generator_vars(G), D=_tf_discriminator_vars(D), Gs=_tf_generator_vars(Gs))
    kwargs = dict(g_kwargs=case["g_kwargs"], d_kwargs=case["d_kwargs"], d_func=case["d_func"])
    _write_tf_pickle(path, tf["G"], tf["D"], tf["Gs"], **kwargs)
    return dict(path=path, G_ema=Gs, G=G, D=D, tf=tf, kwargs=kwargs)


def test_tf_round_trip(tf_case):
    specs = read_networks(tf_case["path"])
    assert sorted(specs) == ["D", "G", "G_ema"]
    for key in ("G_ema", "G"):
        assert specs[key].kind == KIND_GENERATOR
        _assert_arch(specs[key].arch, tf_case[key], ARCH_KEYS)
        _assert_same_state(specs[key].state, tf_case[key])
    assert specs["D"].kind == KIND_DISCRIMINATOR
    _assert_arch(specs["D"].arch, tf_case["D"], D_ARCH_KEYS)
    if tf_case["D"].c_dim:
        _assert_arch(specs["D"].arch, tf_case["D"], D_MAPPING_KEYS)
    _assert_same_state(specs["D"].state, tf_case["D"])

    G = load_generator(tf_case["path"])
    torch.testing.assert_close(_images(G), _images(tf_case["G_ema"]), atol=ATOL, rtol=0)
    D, D_ref = load_discriminator(tf_case["path"]), tf_case["D"]
    img, c = _images(tf_case["G_ema"]), _labels(D_ref.c_dim)
    with torch.no_grad():
        torch.testing.assert_close(
            D(img, c, force_fp32=True), D_ref(img, c, force_fp32=True), atol=ATOL, rtol=0
        )


@torch.no_grad()
def test_tf_layers_match_tf_ops(tf_case):
    """TF ``modulated_conv2d_layer`` (fused_modconv=False) with ``upsample_conv_2d``, and
    ``conv_downsample_2d``, rebuilt from NVIDIA's source and run on the TF-layout variables:

    - up: ``conv2d_transpose`` with the kernel flipped (``w[::-1, ::-1]``), FIR pad (1, 1), gain 4;
    - down: FIR pad (2, 2), then a stride-2 ``conv2d`` (correlation, no flip).
    """
    syn, v = tf_case["tf"]["Gs"]["synthesis"], tf_case["tf"]["D"]
    G, D = load_generator(tf_case["path"]), load_discriminator(tf_case["path"])
    w = torch.randn([2, G.w_dim], generator=torch.Generator().manual_seed(7))
    x = torch.randn([2, 64, 4, 4], generator=torch.Generator().manual_seed(8))

    scope = "8x8/Conv0_up/"
    t = {
        k[len(scope) :]: torch.as_tensor(np.array(a)) for k, a in syn.items() if k.startswith(scope)
    }
    weight = t["weight"] / math.sqrt(9 * 64)  # [kh, kw, I, O] * He gain
    style = w @ (t["mod_weight"] / math.sqrt(G.w_dim)) + t["mod_bias"] + 1
    demod = ((weight[None] * style[:, None, None, :, None]).square().sum([1, 2, 3]) + 1e-8).rsqrt()
    kernel = weight.flip([0, 1]).permute(2, 3, 0, 1)  # w[::-1, ::-1] as [I, O, kh, kw]
    y = F.conv_transpose2d(x * style[:, :, None, None], kernel, stride=2)
    y = _fir(y, BINOMIAL * 4, pad=1) * demod[:, :, None, None]
    y = y + t["noise_strength"] * torch.from_numpy(syn["noise1"])
    ref = _lrelu(y + t["bias"][None, :, None, None])
    if G.arch["conv_clamp"] is not None:
        ref = ref.clamp(-G.arch["conv_clamp"], G.arch["conv_clamp"])
    ours = G.synthesis.b8.conv0(x, w, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)

    x = torch.randn([2, 64, 16, 16], generator=torch.Generator().manual_seed(9))
    weight = torch.from_numpy(v["16x16/Conv1_down/weight"]) / math.sqrt(9 * 64)
    y = F.conv2d(_fir(x, BINOMIAL, pad=2), weight.permute(3, 2, 0, 1), stride=2)
    ref = _lrelu(y + torch.from_numpy(v["16x16/Conv1_down/bias"])[None, :, None, None])
    if D.arch["conv_clamp"] is not None:
        ref = ref.clamp(-D.arch["conv_clamp"], D.arch["conv_clamp"])
    torch.testing.assert_close(D.b16.conv1(x), ref, atol=ATOL, rtol=0)


def _rewrite(tf_case, path: Path, edit) -> None:
    tf = copy.deepcopy(tf_case["tf"])
    edit(tf)
    _write_tf_pickle(path, tf["G"], tf["D"], tf["Gs"], **tf_case["kwargs"])


def test_tf_missing_variable_is_named(tf_case, tmp_path):
    path = tmp_path / "missing.pkl"
    _rewrite(tf_case, path, lambda tf: tf["Gs"]["synthesis"].pop("16x16/Conv1/noise_strength"))
    with pytest.raises(CheckpointError, match="missing synthesis/16x16/Conv1/noise_strength"):
        read_networks(path)


def test_tf_unexpected_variable_is_named(tf_case, tmp_path):
    path = tmp_path / "extra.pkl"
    extra = {"PAGAN/weight": np.zeros([16, 64], np.float32)}  # a comparison method we lack
    _rewrite(tf_case, path, lambda tf: tf["D"].update(extra))
    with pytest.raises(CheckpointError, match="unexpected PAGAN/weight"):
        read_networks(path)

"""Behaviour of the generator and discriminator modules (tiny random networks)."""

from __future__ import annotations

import math

import pytest
import torch

from teacher.networks import Generator
from tests.conftest import randomize_, tiny_discriminator, tiny_generator


@pytest.mark.parametrize("arch", ["skip", "orig", "resnet"])
def test_generator_architectures_layout_and_shapes(arch):
    G = randomize_(tiny_generator(architecture=arch))
    names = set(G.state_dict())
    assert G.num_ws == 2 * int(math.log2(16)) - 2
    assert ("synthesis.b8.torgb.weight" in names) == (arch == "skip")
    assert "synthesis.b16.torgb.weight" in names  # the last block always has torgb
    assert ("synthesis.b8.skip.weight" in names) == (arch == "resnet")
    assert "synthesis.b4.const" in names and "synthesis.b4.conv0.weight" not in names
    z = torch.randn(3, G.z_dim)
    with torch.no_grad():
        img = G(z, None, noise_mode="const")
    assert img.shape == (3, 3, 16, 16) and torch.isfinite(img).all()


@pytest.mark.parametrize("arch", ["resnet", "orig", "skip"])
def test_discriminator_architectures_layout_and_shapes(arch):
    D = randomize_(tiny_discriminator(architecture=arch))
    names = set(D.state_dict())
    assert "b16.fromrgb.weight" in names
    assert ("b8.fromrgb.weight" in names) == (arch == "skip")
    assert ("b4.fromrgb.weight" in names) == (arch == "skip")
    assert ("b8.skip.weight" in names) == (arch == "resnet")
    with torch.no_grad():
        out = D(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 1) and torch.isfinite(out).all()


def test_discriminator_rejects_wrong_image_shape():
    D = tiny_discriminator()
    with pytest.raises(ValueError, match="images must be"):
        D(torch.randn(2, 3, 32, 32))


def test_ws_slicing_torgb_shares_w_with_next_conv0():
    G = tiny_generator()
    ws = torch.arange(G.num_ws).float().reshape(1, -1, 1).expand(2, -1, G.w_dim)
    firsts = [int(s[0, :, 0][0]) for s in G.synthesis.block_ws(ws)]
    lens = [s.shape[1] for s in G.synthesis.block_ws(ws)]
    assert firsts == [0, 1, 3] and lens == [2, 3, 3]  # b4: conv1+torgb; others conv0,conv1,torgb


def test_changing_one_w_changes_only_layers_that_read_it():
    G = randomize_(tiny_generator())
    torch.manual_seed(1)
    ws = torch.randn(1, G.num_ws, G.w_dim)
    with torch.no_grad():
        base = G.synthesis(ws, noise_mode="const")
        for idx in range(G.num_ws):
            ws2 = ws.clone()
            ws2[:, idx] += 1.0
            assert not torch.allclose(G.synthesis(ws2, noise_mode="const"), base), idx


def test_truncation_psi_and_cutoff():
    G = randomize_(tiny_generator())
    G.mapping.w_avg.normal_()
    z = torch.randn(4, G.z_dim)
    with torch.no_grad():
        ws = G.mapping(z, None)
        ws0 = G.mapping(z, None, truncation_psi=0.0)
        ws_half = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.allclose(ws0, G.mapping.w_avg.expand_as(ws0))
    expected = G.mapping.w_avg + 0.5 * (ws[:, :3] - G.mapping.w_avg)
    assert torch.allclose(ws_half[:, :3], expected, atol=1e-6)
    assert torch.equal(ws_half[:, 3:], ws[:, 3:])


def test_w_avg_tracks_batch_mean_in_training_only():
    G = tiny_generator()
    z = torch.randn(8, G.z_dim)
    with torch.no_grad():
        G.eval()
        G.mapping(z, None)
        assert torch.count_nonzero(G.mapping.w_avg) == 0
        G.train()
        w = G.mapping(z, None)[:, 0]
    beta = G.mapping.w_avg_beta
    assert torch.allclose(G.mapping.w_avg, (1 - beta) * w.mean(0), atol=1e-6)


def test_noise_modes():
    G = randomize_(tiny_generator())
    ws = torch.randn(2, G.num_ws, G.w_dim)
    with torch.no_grad():
        c1 = G.synthesis(ws, noise_mode="const")
        c2 = G.synthesis(ws, noise_mode="const")
        r1 = G.synthesis(ws, noise_mode="random")
        r2 = G.synthesis(ws, noise_mode="random")
        none = G.synthesis(ws, noise_mode="none")
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.zero_()
        zero_strength = G.synthesis(ws, noise_mode="const")
    assert torch.equal(c1, c2)
    assert not torch.allclose(r1, r2)
    assert not torch.allclose(c1, none)
    assert torch.allclose(none, zero_strength, atol=1e-6)
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(ws, noise_mode="sometimes")


def test_fused_and_unfused_modconv_agree():
    G = randomize_(tiny_generator())
    ws = torch.randn(3, G.num_ws, G.w_dim)
    with torch.no_grad():
        fused = G.synthesis(ws, noise_mode="const", fused_modconv=True)
        split = G.synthesis(ws, noise_mode="const", fused_modconv=False)
    assert torch.allclose(fused, split, atol=1e-4)


def test_fp16_blocks_run_in_half_and_stay_close_to_fp32():
    G = randomize_(tiny_generator(num_fp16_res=2, conv_clamp=256))
    assert [G.synthesis.b4.use_fp16, G.synthesis.b8.use_fp16, G.synthesis.b16.use_fp16] == [
        False,
        True,
        True,
    ]
    ws = torch.randn(2, G.num_ws, G.w_dim)
    with torch.no_grad():
        x, img = G.synthesis.b4(None, None, ws[:, :2], noise_mode="const")
        x8, _ = G.synthesis.b8(x, img, ws[:, 1:4], noise_mode="const")
        assert x8.dtype == torch.float16
        full = G.synthesis(ws, noise_mode="const", force_fp32=True)
        half = G.synthesis(ws, noise_mode="const", force_fp32=False)
    assert half.dtype == torch.float32
    assert float((full - half).abs().max()) < 0.05


def test_conv_clamp_limits_layer_outputs():
    G = randomize_(tiny_generator(conv_clamp=0.25))
    ws = torch.randn(2, G.num_ws, G.w_dim) * 5
    outputs = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outputs.append(o))
        for name, m in G.synthesis.named_modules()
        if name.endswith(("conv0", "conv1", "torgb"))
    ]
    with torch.no_grad():
        G.synthesis(ws, noise_mode="const")
    for h in hooks:
        h.remove()
    assert outputs
    # SynthesisLayer clamps at conv_clamp * gain (gain 1 here); torgb at conv_clamp.
    assert max(float(o.abs().max()) for o in outputs) <= 0.25 + 1e-6
    G2 = randomize_(tiny_generator(conv_clamp=None))
    G2.load_state_dict(G.state_dict())
    with torch.no_grad():
        unclamped = G2.synthesis(ws, noise_mode="const")
        clamped = G.synthesis(ws, noise_mode="const")
    assert not torch.allclose(unclamped, clamped)


def test_conditioning_changes_generator_and_discriminator_outputs():
    G = randomize_(tiny_generator(c_dim=3))
    D = randomize_(tiny_discriminator(c_dim=3))
    assert "mapping.embed.weight" in G.state_dict()
    assert "mapping.fc0.weight" in D.state_dict() and "mapping.w_avg" not in D.state_dict()
    assert D.b4.out.weight.shape[0] == D.b4.cmap_dim == 32
    z = torch.randn(4, G.z_dim)
    c0 = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 0]), 3).float()
    c1 = torch.nn.functional.one_hot(torch.tensor([1, 1, 1, 1]), 3).float()
    with torch.no_grad():
        assert not torch.allclose(G(z, c0, noise_mode="const"), G(z, c1, noise_mode="const"))
        img = torch.randn(4, 3, 16, 16)
        assert not torch.allclose(D(img, c0), D(img, c1))


def test_freeze_layers_turns_first_layers_into_buffers_with_same_names():
    D = tiny_discriminator(freeze_layers=3)
    ref = tiny_discriminator()
    assert set(D.state_dict()) == set(ref.state_dict())
    trainable = {n for n, _ in D.named_parameters()}
    # b16 has fromrgb, conv0, conv1 (layers 0-2, frozen) and skip (layer 3, trainable).
    assert "b16.fromrgb.weight" not in trainable and "b16.conv1.weight" not in trainable
    assert "b16.skip.weight" in trainable and "b8.conv0.weight" in trainable


def test_gradients_reach_every_generator_parameter():
    G = randomize_(tiny_generator()).train()
    img = G(torch.randn(2, G.z_dim), None, noise_mode="random")
    img.square().mean().backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_invalid_resolution_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=24)

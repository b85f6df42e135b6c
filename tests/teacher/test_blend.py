"""Layer swapping (``teacher.blend``) and the ``toon-teacher blend`` / ``blend-grid`` commands.

Parents are two tiny 16 px generators with different random weights, biases and noise buffers,
so every tensor tells which parent it came from. Expected block membership is written out below
by hand (not taken from ``block_resolution_of``), following the contract in DESIGN.md.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from common.files import file_sha256
from teacher.blend import (
    blend_generators,
    block_resolution_of,
    grid_header_height,
    high_share,
)
from teacher.cli import main
from teacher.io import load_generator, save_network
from teacher.sample import seed_latent, to_uint8
from tests.conftest import randomize_, tiny_generator

# Swap level -> name prefixes that must come from ``low`` in a 16 px generator (b4, b8, b16).
LOW_PREFIXES = {
    0: (),
    4: ("synthesis.b4.",),
    8: ("synthesis.b4.", "synthesis.b8."),
    16: ("synthesis.b4.", "synthesis.b8.", "synthesis.b16."),
}


def parents(**overrides):
    """Two different random generators; ``w_avg`` set too, so the mapping also tells them apart."""
    low = randomize_(tiny_generator(**overrides), seed=1)
    high = randomize_(tiny_generator(**overrides), seed=2)
    with torch.no_grad():
        low.mapping.w_avg.normal_()
        high.mapping.w_avg.normal_()
    return low, high


def states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@torch.no_grad()
def render(G, ws):
    return G.synthesis(ws, noise_mode="const", force_fp32=True)


def test_block_resolution_of_names():
    assert block_resolution_of("synthesis.b4.const") == 4
    assert block_resolution_of("synthesis.b4.resample_filter") == 4
    assert block_resolution_of("synthesis.b4.torgb.affine.weight") == 4
    # conv0 of b64 upsamples 32 -> 64 and belongs to 64; so do its noise buffer and torgb.
    assert block_resolution_of("synthesis.b64.conv0.weight") == 64
    assert block_resolution_of("synthesis.b64.conv0.noise_const") == 64
    assert block_resolution_of("synthesis.b64.torgb.bias") == 64
    assert block_resolution_of("synthesis.b1024.skip.weight") == 1024
    assert block_resolution_of("mapping.w_avg") is None
    assert block_resolution_of("mapping.fc0.weight") is None
    with pytest.raises(ValueError):
        block_resolution_of("b4.fc.weight")


def test_swap_res_zero_is_high_exactly():
    low, high = parents()
    G = blend_generators(low, high, 0)
    assert states_equal(G, high)
    ws = high.mapping(torch.randn(3, high.z_dim), None)
    assert torch.equal(render(G, ws), render(high, ws))


def test_swap_res_full_is_low_exactly():
    low, high = parents()
    G = blend_generators(low, high, 16, mapping_from="low")
    assert states_equal(G, low)
    z = torch.randn(3, low.z_dim)
    with torch.no_grad():
        assert torch.equal(G(z, None, noise_mode="const"), low(z, None, noise_mode="const"))
    # With the default mapping, synthesis is low's and the mapping high's.
    G = blend_generators(low, high, 16)
    for name, t in G.state_dict().items():
        parent = high if name.startswith("mapping.") else low
        assert torch.equal(t, parent.state_dict()[name]), name


@pytest.mark.parametrize("width", [0.0, 0.7])
def test_blending_a_model_with_itself_is_the_identity(width):
    G0, _ = parents()
    twin = copy.deepcopy(G0)
    for R in (0, 4, 8, 16):
        assert states_equal(blend_generators(G0, twin, R, width), G0)


@pytest.mark.parametrize("architecture", ["skip", "resnet"])
@pytest.mark.parametrize("mapping_from", ["high", "low"])
def test_each_tensor_comes_from_the_named_parent(architecture, mapping_from):
    low, high = parents(architecture=architecture)
    lo, hi = low.state_dict(), high.state_dict()
    for R, prefixes in LOW_PREFIXES.items():
        G = blend_generators(low, high, R, mapping_from=mapping_from)
        for name, t in G.state_dict().items():
            if name.startswith("mapping."):
                want, other = (lo, hi) if mapping_from == "low" else (hi, lo)
            elif name.startswith(prefixes):
                want, other = lo, hi
            else:
                want, other = hi, lo
            assert torch.equal(t, want[name]), (R, name)
            if not name.endswith("resample_filter"):  # filters are equal in both parents
                assert not torch.equal(t, other[name]), (R, name)
    if architecture == "resnet":  # the upsampling shortcut into K belongs to K
        G = blend_generators(low, high, 8)
        assert torch.equal(G.synthesis.b8.skip.weight, low.synthesis.b8.skip.weight)
        assert torch.equal(G.synthesis.b16.skip.weight, high.synthesis.b16.skip.weight)


def test_the_switch_is_not_one_block_off():
    """bK.conv0 (the upsampling conv from K/2 into K) and bK.torgb belong to K."""
    low, high = parents()
    G = blend_generators(low, high, 4)
    assert torch.equal(G.synthesis.b8.conv0.weight, high.synthesis.b8.conv0.weight)
    assert torch.equal(G.synthesis.b4.torgb.weight, low.synthesis.b4.torgb.weight)
    G = blend_generators(low, high, 8)
    assert torch.equal(G.synthesis.b8.conv0.weight, low.synthesis.b8.conv0.weight)
    assert torch.equal(G.synthesis.b8.conv0.noise_const, low.synthesis.b8.conv0.noise_const)
    assert torch.equal(G.synthesis.b8.torgb.bias, low.synthesis.b8.torgb.bias)
    assert torch.equal(G.synthesis.b16.conv0.weight, high.synthesis.b16.conv0.weight)


def test_tiny_smooth_width_equals_the_hard_switch():
    low, high = parents()
    for R in (0, 4, 8, 16):
        assert states_equal(blend_generators(low, high, R, 1e-4), blend_generators(low, high, R))


def test_smooth_mixes_with_the_sigmoid_share():
    low, high = parents()
    R, width = 8, 0.5
    G = blend_generators(low, high, R, width)
    # log2 K - log2 R - 0.5 for K = 4, 8, 16 is -1.5, -0.5, 0.5; divided by the width 0.5.
    for K, x in [(4, -3.0), (8, -1.0), (16, 1.0)]:
        a = 1 / (1 + math.exp(-x))
        assert high_share(K, R, width) == pytest.approx(a, rel=1e-12)
        lo = getattr(low.synthesis, f"b{K}").conv1.weight
        hi = getattr(high.synthesis, f"b{K}").conv1.weight
        got = getattr(G.synthesis, f"b{K}").conv1.weight
        torch.testing.assert_close(got, (1 - a) * lo + a * hi, rtol=1e-6, atol=1e-6)
        assert not torch.equal(got, lo) and not torch.equal(got, hi)
    assert torch.equal(G.mapping.w_avg, high.mapping.w_avg)
    assert torch.equal(G.mapping.fc0.weight, high.mapping.fc0.weight)
    # R = 0 is all high at any width.
    assert states_equal(blend_generators(low, high, 0, 3.0), high)


def test_mismatched_architectures_and_bad_settings_are_clear_errors():
    low, _ = parents()
    other = tiny_generator(channel_max=16, conv_clamp=256)
    with pytest.raises(ValueError, match=r"channel_max \(low 32, high 16\).*conv_clamp"):
        blend_generators(low, other, 8)
    for bad in (2, 12, 32, -4):
        with pytest.raises(ValueError, match="power of two from 4 to 16"):
            blend_generators(low, low, bad)
    with pytest.raises(ValueError, match="width"):
        blend_generators(low, low, 8, width=-1.0)
    with pytest.raises(ValueError, match="mapping_from"):
        blend_generators(low, low, 8, mapping_from="base")


@pytest.fixture
def parent_files(tmp_path):
    low, high = parents()
    low_path = save_network(low, tmp_path / "toon.safetensors")
    high_path = save_network(high, tmp_path / "base.safetensors")
    return low_path, high_path


def test_blend_cli_writes_the_blend_and_its_provenance(tmp_path, parent_files, capsys):
    low_path, high_path = parent_files
    out = tmp_path / "blended.safetensors"
    argv = ["blend", "--low", str(low_path), "--high", str(high_path), "--out", str(out)]
    assert main(argv + ["--swap-res", "8", "--smooth", "0.3", "--mapping-from", "low"]) == 0
    assert "wrote" in capsys.readouterr().out

    low, high = load_generator(low_path), load_generator(high_path)
    assert states_equal(load_generator(out), blend_generators(low, high, 8, 0.3, "low"))
    with safe_open(out, framework="pt") as f:
        info = json.loads(f.metadata()["toon"])
    assert info["kind"] == "teacher.generator" and info["arch"] == low.arch
    assert info["source"] == {
        "blend": {
            "low": {"file": "toon.safetensors", "sha256": file_sha256(low_path)},
            "high": {"file": "base.safetensors", "sha256": file_sha256(high_path)},
            "swap_res": 8,
            "smooth_width": 0.3,
            "mapping_from": "low",
        }
    }

    assert main(argv + ["--swap-res", "4"]) == 0
    with safe_open(out, framework="pt") as f:
        blend = json.loads(f.metadata()["toon"])["source"]["blend"]
    assert (blend["swap_res"], blend["smooth_width"], blend["mapping_from"]) == (4, 0.0, "high")
    assert states_equal(load_generator(out), blend_generators(low, high, 4))


def test_blend_cli_errors_are_one_line(tmp_path, parent_files, capsys):
    low_path, high_path = parent_files
    other = save_network(tiny_generator(img_resolution=32), tmp_path / "other.safetensors")
    out = tmp_path / "blended.safetensors"
    cases = [
        (["--low", str(low_path), "--high", str(high_path), "--swap-res", "12"], "power of two"),
        (["--low", str(low_path), "--high", str(high_path), "--swap-res", "32"], "from 4 to 16"),
        (["--low", str(low_path), "--high", str(other), "--swap-res", "8"], "img_resolution"),
        (
            ["--low", str(low_path), "--high", str(high_path), "--swap-res", "8", "--smooth", "0"],
            "--smooth must be > 0",
        ),
    ]
    for args, expected in cases:
        assert main(["blend", *args, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("toon-teacher: error:"), err
        assert expected in err[0]
    assert not out.exists()


def test_blend_grid_cli_layout_and_cells(tmp_path, parent_files):
    low_path, high_path = parent_files
    out = tmp_path / "grid.png"
    args = ["blend-grid", "--low", str(low_path), "--high", str(high_path), "--out", str(out)]
    args += ["--seeds", "0-2", "--levels", "4,8", "--trunc", "0.7", "--device", "cpu"]
    assert main(args) == 0

    res, header, cols, rows = 16, grid_header_height(16), 4, 3
    grid = np.asarray(Image.open(out))
    assert header == 16 and Image.open(out).size == (cols * res, header + rows * res)
    assert grid.shape == (header + rows * res, cols * res, 3)
    assert (grid[:header] < 128).any() and (grid[:header] == 255).any()  # labels drawn

    low, high = load_generator(low_path), load_generator(high_path)
    z = torch.from_numpy(np.stack([seed_latent(s, high.z_dim) for s in range(3)]))
    with torch.no_grad():
        ws = high.mapping(z, None, truncation_psi=0.7)
    columns = [high, blend_generators(low, high, 4), blend_generators(low, high, 8), low]
    for col, G in enumerate(columns):
        want = to_uint8(render(G, ws))
        for row in range(rows):
            y = header + row * res
            cell = grid[y : y + res, col * res : (col + 1) * res]
            assert np.array_equal(cell, want[row]), (row, col)


def test_blend_grid_cli_rejects_levels_above_the_resolution(tmp_path, parent_files, capsys):
    low_path, high_path = parent_files
    out = tmp_path / "grid.png"
    argv = ["blend-grid", "--low", str(low_path), "--high", str(high_path), "--out", str(out)]
    assert main(argv + ["--levels", "4,32", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("toon-teacher: error:") and "got 32" in err[0]
    assert not out.exists()

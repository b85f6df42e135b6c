"""Student networks: presets, size handling, the mobile budget, batch-norm folding, ONNX export."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from student.networks import (
    GENERATOR_PRESETS,
    MobileUNet,
    MultiscaleDiscriminator,
    UNet,
    build_generator,
    count_macs,
    count_parameters,
    fold_batch_norm,
    generator_arch,
)

MOBILE_MAX_PARAMS = 2_500_000
MOBILE_MAX_MACS = 3_000_000_000


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Run on one intra-op thread: these small tensors gain nothing from more, and on a busy
    2-core machine OpenMP threads that wait on each other make the same test 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trained_bn(G: torch.nn.Module, size: int) -> torch.nn.Module:
    """Give batch norms non-trivial running statistics (a few train-mode forwards) and random
    affine values, as after training."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
        G.train()
        for _ in range(3):
            G(torch.rand([4, 3, size, size], generator=g) * 2 - 1)
    return G.eval()


@pytest.mark.parametrize(("preset", "stride"), [("mobile", 16), ("small", 16), ("tiny", 8)])
def test_mobile_unet_presets_keep_any_divisible_size(preset: str, stride: int) -> None:
    G = build_generator(generator_arch(preset)).eval()
    assert G.stride == stride
    with torch.no_grad():
        for shape in [(2, 3, 32, 32), (1, 3, 2 * stride, 3 * stride)]:
            y = G(torch.rand(shape) * 2 - 1)
            assert y.shape == shape
            assert float(y.abs().max()) <= 1.0


def test_unet256_is_the_pix2pix_size_and_runs_at_256() -> None:
    G = build_generator(generator_arch("unet256")).eval()
    assert G.stride == 256
    # pix2pix's unet_256 has 54.414 M parameters; ours keeps a bias on the two convolutions
    # that have no norm after them (the outermost and innermost down convolutions): +576.
    assert count_parameters(G) == pytest.approx(54_414_000, rel=1e-4)
    with torch.no_grad():
        y = G(torch.rand([1, 3, 256, 256]) * 2 - 1)
    assert y.shape == (1, 3, 256, 256)


def test_mobile_default_is_within_the_budget() -> None:
    G = build_generator(generator_arch("mobile"))
    assert count_parameters(G) <= MOBILE_MAX_PARAMS
    assert count_macs(G, 256) <= MOBILE_MAX_MACS
    arch = generator_arch("mobile")
    assert arch["separable"] is True and arch["norm"] == "batch"
    assert not any(isinstance(m, torch.nn.Dropout) for m in G.modules())


def test_count_macs_counts_a_convolution_by_hand() -> None:
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert count_macs(conv, size=8) == 8 * 8 * 4 * 3 * 9
    dw = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6)
    assert count_macs(dw, size=8, channels=6) == 8 * 8 * 6 * 9


def test_generator_arch_lists_every_argument_and_rebuilds() -> None:
    arch = generator_arch("tiny", mid_blocks=3)
    assert arch["preset"] == "tiny" and arch["family"] == "mobile_unet" and arch["mid_blocks"] == 3
    for name in ("in_channels", "channels", "enc_blocks", "dec_blocks", "upsample", "stem_kernel"):
        assert name in arch
    a = build_generator(arch)
    b = build_generator(arch)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert set(GENERATOR_PRESETS) >= {"mobile", "small", "unet256", "tiny"}
    with pytest.raises(ValueError, match="unknown generator preset"):
        generator_arch("huge")
    with pytest.raises(ValueError, match="no arguments"):
        generator_arch("tiny", wings=2)
    with pytest.raises(ValueError, match="unknown generator family"):
        build_generator({"family": "gpt"})


@pytest.mark.parametrize(
    "net",
    [
        lambda: build_generator(generator_arch("tiny")),
        lambda: MobileUNet(
            channels=[8, 16, 24],
            enc_blocks=[1, 1],
            dec_blocks=[1, 1],
            separable=False,
            skip="concat",
            upsample="nearest",
        ),
        lambda: UNet(base_channels=8, num_downs=4),
    ],
)
def test_fold_batch_norm_computes_the_same_function(net) -> None:
    G = _trained_bn(net(), 32)
    folded = fold_batch_norm(G)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand([3, 3, 32, 32]) * 2 - 1
    with torch.no_grad():
        ref, out = G(x), folded(x)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules())  # G itself untouched


def test_onnx_export_at_opset_17_with_dynamic_batch_and_size(tmp_path) -> None:
    """The folded tiny student exports with the TorchScript-based exporter at opset 17 and
    ONNX Runtime reproduces torch (float32, max |diff| < 1e-5) at other batch sizes and sizes."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    G = fold_batch_norm(_trained_bn(build_generator(generator_arch("tiny")), 32))
    path = tmp_path / "tiny.onnx"
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            G,
            (torch.zeros([1, 3, 32, 32]),),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["image"],
            output_names=["toon"],
            dynamic_axes={"image": axes, "toon": axes},
        )
    model = onnx.load(str(path))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    ops = {n.op_type for n in model.graph.node}
    assert ops <= {"Conv", "Relu", "Add", "Resize", "Tanh", "Constant", "Identity"}, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 32, 32), (1, 3, 48, 64)]:
        x = torch.rand(shape) * 2 - 1
        (y,) = sess.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = G(x).numpy()
        assert np.abs(y - ref).max() < 1e-5


def test_multiscale_discriminator_returns_features_per_scale() -> None:
    D = MultiscaleDiscriminator(6, channels=8, layers=2, scales=3, norm="instance")
    out = D(torch.zeros([2, 3, 64, 64]), torch.zeros([2, 3, 64, 64]))
    assert len(out) == 3
    assert all(len(feats) == 4 for feats in out)  # 2 stride-2 layers, 1 stride-1, logits
    assert [feats[-1].shape[1] for feats in out] == [1, 1, 1]
    sizes = [feats[-1].shape[-1] for feats in out]
    assert sizes[0] > sizes[1] > sizes[2]
    with pytest.raises(ValueError):
        MultiscaleDiscriminator(scales=0)


def test_residual_output_starts_as_the_identity_and_adds_its_head() -> None:
    """``output="residual"``: the untrained network returns its input exactly; with a head that
    draws a constant +0.3 it returns the input plus 0.3, clipped at 1 (tanh would give 0.29)."""
    torch.manual_seed(0)
    G = build_generator(generator_arch("tiny", output="residual")).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(G(x), x, rtol=0, atol=0)
        G.head.bias.fill_(0.3)
        torch.testing.assert_close(G(x), (x + 0.3).clamp(max=1.0), rtol=0, atol=1e-6)
    plain = build_generator(generator_arch("tiny")).eval()
    with torch.no_grad():
        assert (plain(x) - x).abs().mean() > 0.1  # the tanh head does not start as the identity
    with pytest.raises(ValueError, match="output must be one of"):
        build_generator(generator_arch("tiny", output="sigmoid"))


def test_residual_output_is_refused_for_the_pix2pix_unet() -> None:
    from student.config import StudentConfig

    with pytest.raises(ValueError, match="needs a mobile, small or tiny generator"):
        StudentConfig(arch="unet256", output="residual").check()

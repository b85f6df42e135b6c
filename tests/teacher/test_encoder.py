"""The inversion encoder: network contract, degradations, files, training and its use as the
projector's start (``toon-teacher encoder train``, ``project --encoder``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from teacher.cli import main
from teacher.encoder import (
    Encoder,
    blur,
    check_pair,
    degrade,
    encode_images,
    encoder_for,
    jpeg,
    load_encoder,
    save_encoder,
    warm_start,
)
from teacher.encoder_train import EncoderConfig, EncoderLoss, draw_samples, make_config
from teacher.encoder_train import training_loop as encoder_loop
from teacher.io import load_generator, save_network
from teacher.project import REFINE, ProjectConfig, project, psnr
from teacher.spec import CheckpointError
from tests.conftest import tiny_generator, tiny_teacher_file

TINY_ARCH = dict(channel_base=256, channel_max=32, head_channels=4, hidden=64)


@pytest.fixture(scope="module")
def G():
    return load_generator(tiny_teacher_file())


def _cfg(tmp_path: Path, **kw) -> EncoderConfig:
    values = dict(
        network=str(tiny_teacher_file()),
        outdir=str(tmp_path / "run"),
        **TINY_ARCH,
        batch=8,
        lr=2e-3,
        kimg=0.064,
        tick_kimg=0.032,
        snap=1,
        eval_n=8,
        grid_n=2,
    )
    values.update(kw)
    return make_config("tiny", values)


# -- network ----------------------------------------------------------------------------------


def test_fresh_encoder_codes_lie_in_w_and_have_the_generator_shape(G):
    E = encoder_for(G, TINY_ARCH, samples=2000)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ws = E(x)
    assert ws.shape == (3, G.num_ws, G.w_dim)
    # The per-layer deltas start at zero: every layer gets the same w (a point of W).
    assert torch.allclose(ws[:, :1].expand_as(ws), ws, atol=0)
    base, delta = E.parts(x)
    assert torch.equal(delta, torch.zeros_like(delta))
    assert torch.allclose(E.codes(base, delta), ws)
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        E(torch.zeros(1, 3, 16, 16))


def test_encoder_for_stores_the_generators_w_statistics(G):
    E = encoder_for(G, TINY_ARCH, samples=4000)
    g = torch.Generator().manual_seed(123)  # independent samples
    with torch.no_grad():
        w = G.mapping(torch.randn(4000, G.z_dim, generator=g), None)[:, 0]
    spread = w.std(0)
    # Means of 4000 samples agree within a few standard errors (std / sqrt(4000) ~ 0.016 std).
    assert ((E.w_avg - w.mean(0)).abs() / spread).max() < 0.1
    assert ((E.w_std / spread) - 1).abs().max() < 0.1


def test_encoder_rejects_resolutions_that_are_not_powers_of_two():
    with pytest.raises(ValueError, match="power of two"):
        Encoder(24, 6, 16)


# -- feedback passes --------------------------------------------------------------------------

FEEDBACK_ARCH = dict(TINY_ARCH, feedback=1, passes=3)


def _render_const(G, ws):
    with torch.no_grad():
        return G.synthesis(ws, noise_mode="const", force_fp32=True)


def test_feedback_passes_correct_the_code_from_the_render_of_the_previous_one(G):
    E = encoder_for(G, FEEDBACK_ARCH, samples=1000)
    with torch.no_grad():
        E.to_delta.bias.normal_(0, 0.2)
    # The first pass reads the generator's render of w_avg (computed here independently).
    mean_face = _render_const(G, E.w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1))[0]
    torch.testing.assert_close(E.avg_image, mean_face)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(E.invert(x, G, 1), E(x))
        base, delta = E.parts(x, mean_face.expand(2, -1, -1, -1))
        ws = E.w_avg + E.w_std * (base[:, None] + delta)
        for _ in range(2):  # ws_{t+1} = ws_t + w_std * (base + delta)(image, G(ws_t))
            base, delta = E.parts(x, _render_const(G, ws))
            ws = ws + E.w_std * (base[:, None] + delta)
        torch.testing.assert_close(E.invert(x, G), ws)  # 3 passes: the encoder's default
        # The render input matters: another render gives another correction.
        other = E.parts(x, _render_const(G, ws))[0]
        assert not torch.allclose(other, E.parts(x, -_render_const(G, ws))[0])
    with pytest.raises(ValueError, match="need the generator"):
        E.invert(x, None, 2)
    one_pass = encoder_for(G, TINY_ARCH, samples=200)
    with pytest.raises(ValueError, match="one pass"):
        one_pass.invert(x, G, 2)
    with pytest.raises(ValueError, match="no feedback input"):
        one_pass.parts(x, x)
    with pytest.raises(ValueError, match="needs feedback=1"):
        Encoder(32, G.num_ws, G.w_dim, passes=2)


def test_warm_start_gives_a_feedback_encoder_the_first_pass_of_a_one_pass_one(G):
    one = encoder_for(G, TINY_ARCH, samples=500)
    with torch.no_grad():
        one.to_delta.bias.normal_(0, 0.2)
        one.fc.weight.mul_(1.5)
    fb = encoder_for(G, FEEDBACK_ARCH, samples=500)
    assert warm_start(fb, one.state_dict()) == ["fromrgb.weight"]
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(fb(x), one(x), rtol=0, atol=1e-6)
        assert not torch.allclose(fb.invert(x, G, 2), one(x))  # later passes do move it
    wide = encoder_for(G, dict(TINY_ARCH, hidden=96), samples=200)
    with pytest.raises(ValueError, match="fc.weight"):
        warm_start(wide, one.state_dict())


def test_feedback_encoder_files_round_trip_and_older_files_load_as_one_pass(G, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    E = encoder_for(G, FEEDBACK_ARCH, samples=300)
    with torch.no_grad():
        E.to_delta.bias.normal_(0, 0.2)
    path = save_encoder(E, tmp_path / "fb.safetensors", {"file": "g", "sha256": ""})
    F = load_encoder(path)
    assert F.feedback and F.passes == 3
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(F.invert(x, G), E.eval().invert(x, G), rtol=0, atol=0)
    # A file written before feedback existed has no feedback/passes in its arch.
    one = encoder_for(G, TINY_ARCH, samples=300)
    new = save_encoder(one, tmp_path / "one.safetensors", {"file": "g", "sha256": ""})
    with safe_open(str(new), framework="pt") as f:
        meta = json.loads(f.metadata()["toon"])
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key in ("feedback", "passes"):
        del meta["arch"][key]
    old = tmp_path / "old.safetensors"
    save_file(state, str(old), metadata={"toon": json.dumps(meta)})
    loaded = load_encoder(old)
    assert not loaded.feedback and loaded.passes == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), one.eval()(x), rtol=0, atol=0)


# -- degradations -----------------------------------------------------------------------------


def test_blur_matches_an_independent_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    torch.manual_seed(1)
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    sigma = torch.tensor([0.8, 1.5])
    out = blur(x.float(), sigma).double()
    radius = int(np.ceil(3 * 1.5))
    for i, s in enumerate(sigma.tolist()):
        # Reflect padding without the edge repeated is scipy's "mirror" mode; both truncate
        # the kernel at the same radius (in pixels) and normalise it.
        ref = ndimage.gaussian_filter(
            x[i].numpy(), sigma=(0, s, s), mode="mirror", truncate=radius / s
        )
        np.testing.assert_allclose(out[i].numpy(), ref, atol=2e-6)


def test_degrade_is_a_function_of_its_generator_and_off_when_its_probabilities_are_zero():
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    cfg = dict(prob=1.0, colour=0.3, blur=1.0, noise=0.05, jpeg_prob=1.0, jpeg_min=30)
    a = degrade(x, torch.Generator().manual_seed(5), cfg)
    b = degrade(x, torch.Generator().manual_seed(5), cfg)
    c = degrade(x, torch.Generator().manual_seed(6), cfg)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.01
    assert (a - x).abs().mean() > 0.02  # every degradation was on
    assert a.min() >= -1 and a.max() <= 1
    off = dict(cfg, prob=0.0, jpeg_prob=0.0)
    assert torch.equal(degrade(x, torch.Generator().manual_seed(5), off), x)


def test_jpeg_loses_more_at_lower_quality():
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    img = torch.stack([xx, yy, (xx * yy * 6).sin()])[None].repeat(2, 1, 1, 1)
    out = jpeg(img, [95, 10])
    err = (out - img).abs().flatten(1).mean(1)
    assert err[0] < 0.02 < err[1]


# -- files ------------------------------------------------------------------------------------


def test_encoder_file_round_trip_and_bad_files(G, tmp_path):
    E = encoder_for(G, TINY_ARCH, samples=500)
    with torch.no_grad():
        E.to_delta.bias.normal_()  # non-zero deltas, so layers differ
    path = save_encoder(E, tmp_path / "e.safetensors", {"file": "g", "sha256": "0" * 64})
    F = load_encoder(path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(E.eval()(x), F(x))
    assert F.info["arch"] == E.arch and F.info["kind"] == "teacher.encoder"
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not an encoder"):
        load_encoder(tiny_teacher_file())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="garbage.safetensors"):
        load_encoder(garbage)


def test_check_pair_refuses_other_shapes_and_warns_about_other_files(G, tmp_path):
    E = encoder_for(G, TINY_ARCH, samples=500)
    net = tiny_teacher_file()
    from common.files import file_sha256

    path = save_encoder(
        E, tmp_path / "e.safetensors", {"file": net.name, "sha256": file_sha256(net)}
    )
    F = load_encoder(path)
    assert check_pair(F, G, net) is None
    other = save_network(G, tmp_path / "copy-with-other-meta.safetensors", source={"x": 1})
    assert "was trained for" in check_pair(F, G, other)
    small = tiny_generator()
    with pytest.raises(CheckpointError, match="train an encoder for this generator"):
        check_pair(F, small, "small.safetensors")


# -- training ---------------------------------------------------------------------------------


def test_draw_samples_follow_the_stated_recipe(G, tmp_path):
    cfg = _cfg(tmp_path, mix_prob=0.0, trunc_min=1.0, trunc_max=1.0, noise_mode="const")
    ws, target, inp = draw_samples(G, cfg, seed=3, n=4, device=torch.device("cpu"))
    # The same seed gives the same samples; a W code (no mixing) has equal layers.
    ws2, _, _ = draw_samples(G, cfg, seed=3, n=4, device=torch.device("cpu"))
    assert torch.equal(ws, ws2)
    z = torch.randn([4, G.z_dim], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = G.mapping(z, None)
        render = G.synthesis(expected, noise_mode="const", force_fp32=True)
    torch.testing.assert_close(ws, expected)
    torch.testing.assert_close(target, render)
    mixed = _cfg(tmp_path, mix_prob=1.0)
    ws_m, _, _ = draw_samples(G, mixed, seed=3, n=8, device=torch.device("cpu"))
    assert all(not torch.allclose(w[0], w[-1]) for w in ws_m)


def test_encoder_loss_terms_against_a_hand_computation(G, tmp_path):
    cfg = _cfg(tmp_path, dfeat_weight=0.0, latent_weight=2.0, delta_weight=0.5)
    E = encoder_for(G, TINY_ARCH, samples=500)
    with torch.no_grad():
        E.to_delta.bias.normal_(0, 0.1)
    ws, target, inp = draw_samples(G, cfg, seed=1, n=4, device=torch.device("cpu"))
    total, terms = EncoderLoss(G, None, cfg, E.w_std, torch.device("cpu"))(E, ws, target, inp)
    with torch.no_grad():
        base, delta = E.parts(inp)
        pred = E.w_avg + E.w_std * (base[:, None] + delta)
        recon = G.synthesis(pred, noise_mode="const", force_fp32=True)
        latent = (((pred - ws) / E.w_std) ** 2).mean()
        pyramid = []
        a, b = recon, target
        while True:
            pyramid.append(((a - b) ** 2).flatten(1).mean(1))
            if a.shape[2] <= 16:
                break
            a, b = torch.nn.functional.avg_pool2d(a, 2), torch.nn.functional.avg_pool2d(b, 2)
        image = torch.stack(pyramid).sum(0).mean()
        want = 2.0 * latent + image + 0.5 * (delta**2).mean()
    torch.testing.assert_close(terms["latent"], latent)
    torch.testing.assert_close(terms["image"], image)
    torch.testing.assert_close(total.detach(), want)


def test_encoder_loss_of_several_passes_is_the_mean_of_each_pass_from_the_last(G, tmp_path):
    cfg = _cfg(tmp_path, dfeat_weight=0.0, latent_weight=1.5, delta_weight=0.2, passes=2)
    E = encoder_for(G, cfg.arch(), samples=500)
    with torch.no_grad():
        E.to_delta.bias.normal_(0, 0.1)
    ws, target, inp = draw_samples(G, cfg, seed=2, n=3, device=torch.device("cpu"))
    total, terms = EncoderLoss(G, None, cfg, E.w_std, torch.device("cpu"))(E, ws, target, inp)

    def pass_loss(start, recon):
        base, delta = E.parts(inp, recon)
        pred = (E.w_avg if start is None else start) + E.w_std * (base[:, None] + delta)
        img = _render_const(G, pred)
        image = sum(
            ((torch.nn.functional.avg_pool2d(img, k) - torch.nn.functional.avg_pool2d(target, k))
             ** 2).flatten(1).mean(1)
            for k in (1, 2)  # the pyramid of a 32 px image: 32 and 16 px
        ).mean()  # fmt: skip
        loss = 1.5 * (((pred - ws) / E.w_std) ** 2).mean() + image + 0.2 * (delta**2).mean()
        return loss, pred, img

    with torch.no_grad():
        first, pred, img = pass_loss(None, None)
        second, _, img2 = pass_loss(pred, img)
    torch.testing.assert_close(total.detach(), (first + second) / 2)
    torch.testing.assert_close(terms["psnr_db"], psnr(img2, target).mean())
    torch.testing.assert_close(terms["first_psnr_db"], psnr(img, target).mean())


def test_training_improves_the_codes_and_resumes_exactly(G, tmp_path):
    cfg = _cfg(tmp_path, kimg=0.192, tick_kimg=0.064, snap=3, dfeat_weight=0.0)
    fresh = encoder_for(G, cfg.arch())
    samples = draw_samples(G, cfg, seed=99, n=16, device=torch.device("cpu"))

    def score(E):
        with torch.no_grad():
            ws = E.eval()(samples[2])
            return float(
                psnr(G.synthesis(ws, noise_mode="const", force_fp32=True), samples[1]).mean()
            )

    result = encoder_loop(cfg, progress=False)
    assert result["cur_nimg"] == 192 and not result["stopped"]
    out = Path(cfg.outdir)
    trained = load_encoder(out / "encoder.safetensors")
    assert score(trained) > score(fresh) + 1.0  # dB
    stats = [json.loads(x) for x in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["Progress/kimg"] for s in stats] == [0.064, 0.128, 0.192]
    assert "Eval/psnr_db" in stats[-1] and (out / "grid000000.192.png").exists()

    # The same run killed after its first tick and started again ends with the same weights.
    cfg2 = cfg.replace(outdir=str(tmp_path / "run2"))
    part = encoder_loop(cfg2, progress=False, stop_after_steps=12)  # a tick is 8 steps
    assert part["stopped"]
    encoder_loop(cfg2, progress=False)
    again = load_encoder(Path(cfg2.outdir) / "encoder.safetensors")
    for a, b in zip(trained.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    lines = (Path(cfg2.outdir) / "stats.jsonl").read_text().splitlines()
    assert len(lines) == 3  # no tick logged twice


def test_cli_train_writes_a_run_and_refuses_a_changed_config(tmp_path, capsys):
    argv = ["encoder", "train", "--network", str(tiny_teacher_file()), "--outdir"]
    argv += [str(tmp_path / "r"), "--preset", "tiny", "--kimg", "0.032", "--tick-kimg", "0.032"]
    argv += ["--batch", "8", "--channel-base", "256", "--channel-max", "32", "--quiet"]
    assert main(argv) == 0
    assert (tmp_path / "r" / "encoder.safetensors").exists()
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["channel_base"] == 256 and cfg["preset"] == "tiny"
    assert main([*argv[:-1], "--lr", "0.5", "--quiet"]) == 1
    assert "different config (lr)" in capsys.readouterr().err
    assert main(["encoder", "train", "--network", str(tmp_path / "nope.safetensors"),
                 "--outdir", str(tmp_path / "x"), "--preset", "tiny", "--quiet"]) == 1  # fmt: skip
    assert "nope.safetensors" in capsys.readouterr().err


def test_cli_trains_a_feedback_encoder_from_a_one_pass_one(G, tmp_path, capsys):
    one = _trained_encoder(tmp_path)
    argv = ["encoder", "train", "--network", str(tiny_teacher_file()), "--preset", "tiny"]
    argv += ["--kimg", "0.032", "--tick-kimg", "0.032", "--batch", "8", "--quiet"]
    argv += ["--channel-base", "256", "--channel-max", "32", "--head-channels", "4"]
    argv += ["--hidden", "64", "--dfeat-weight", "0", "--eval-n", "8"]
    out = tmp_path / "fb"
    assert main([*argv, "--passes", "2", "--init", str(one), "--outdir", str(out)]) == 0
    assert "weights from" in capsys.readouterr().err
    fb = load_encoder(out / "encoder.safetensors")
    assert fb.feedback and fb.passes == 2
    stats = json.loads((out / "stats.jsonl").read_text().splitlines()[-1])
    assert {"Loss/first_psnr_db", "Eval/first_psnr_db", "Eval/psnr_db"} <= set(stats)
    # An encoder of another architecture cannot start the run.
    bad = [*argv, "--hidden", "96", "--passes", "2", "--init", str(one)]  # the last --hidden wins
    assert main([*bad, "--outdir", str(tmp_path / "bad")]) == 1
    assert "--init" in capsys.readouterr().err


def _feedback_encoder(G, tmp_path: Path) -> Path:
    E = encoder_for(G, FEEDBACK_ARCH, samples=500)
    with torch.no_grad():
        E.to_delta.bias.normal_(0, 0.2)
    return save_encoder(E, tmp_path / "fb.safetensors", {"file": "g", "sha256": ""})


# -- the projector's start --------------------------------------------------------------------


def test_projection_from_a_start_keeps_it_at_zero_steps_and_refines_it(G):
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        true = G.mapping(torch.randn(2, G.z_dim, generator=g), None, truncation_psi=0.7)
        target = G.synthesis(true, noise_mode="const", force_fp32=True)
    start = true + 0.3 * torch.randn(true.shape, generator=g)  # a start near the answer
    cfg = dict(optimize_noise=False, w_avg_samples=500, initial_lr=0.01, initial_noise_factor=0)
    zero = project(G, target, ProjectConfig(steps=0, **cfg), init_ws=start)
    assert torch.equal(zero.ws, start)
    with torch.no_grad():
        torch.testing.assert_close(
            zero.images, G.synthesis(start, noise_mode="const", force_fp32=True)
        )
    refined = project(G, target, ProjectConfig(steps=100, **cfg), init_ws=start)
    assert float(psnr(refined.images, target).min()) > float(psnr(zero.images, target).max()) + 3
    assert refined.final.shape == (2,) and (refined.final < zero.final).all()


def _trained_encoder(tmp_path: Path) -> Path:
    cfg = _cfg(tmp_path, kimg=0.128, tick_kimg=0.128, dfeat_weight=0.0)
    encoder_loop(cfg, progress=False)
    return Path(cfg.outdir) / "encoder.safetensors"


def test_cli_project_with_an_encoder(G, tmp_path, capsys):
    enc = _trained_encoder(tmp_path)
    faces = tmp_path / "faces"
    faces.mkdir()
    with torch.no_grad():
        ws = G.mapping(torch.randn(2, G.z_dim), None, truncation_psi=0.7)
        imgs = (G.synthesis(ws, noise_mode="const", force_fp32=True) * 127.5 + 128).clamp(0, 255)
    crops = imgs.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, c in enumerate(crops):
        Image.fromarray(c).save(faces / f"f{i}.png")
    base = ["project", "--network", str(tiny_teacher_file()), "--target", str(faces), "--aligned"]
    base += ["--encoder", str(enc), "--device", "cpu"]
    assert main([*base, "--steps", "0", "--outdir", str(tmp_path / "p0")]) == 0
    err = capsys.readouterr().err
    assert "start = encoder.safetensors codes" in err
    w0 = np.load(tmp_path / "p0" / "projected_w.npz")["w"]
    E = load_encoder(enc)
    np.testing.assert_allclose(w0, encode_images(E, crops).numpy(), atol=1e-5)
    report = json.loads((tmp_path / "p0" / "report.json").read_text())
    assert report["steps"] == 0 and report["start"] == str(enc)
    assert main([*base, "--steps", "20", "--outdir", str(tmp_path / "p20")]) == 0
    r20 = json.loads((tmp_path / "p20" / "report.json").read_text())
    assert r20["initial_lr"] == REFINE["initial_lr"]
    # Refining encoder codes uses the pixel terms only unless --dfeat-weight asks for D's.
    assert r20["loss_terms"] == ["pixel mse"] and "refining encoder codes" in r20["loss_why"]
    for a, b in zip(report["images"], r20["images"], strict=True):
        assert b["final_distance"] < a["final_distance"]
    # No encoder: zero steps would project nothing.
    no_enc = ["project", "--network", str(tiny_teacher_file()), "--target", str(faces)]
    assert main([*no_enc, "--aligned", "--steps", "0", "--outdir", str(tmp_path / "x")]) == 1
    assert "--steps 0" in capsys.readouterr().err


def test_cli_project_runs_the_passes_of_a_feedback_encoder(G, tmp_path, capsys):
    fb = _feedback_encoder(G, tmp_path)
    faces = tmp_path / "faces"
    faces.mkdir()
    crops = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    for i, c in enumerate(crops):
        Image.fromarray(c).save(faces / f"f{i}.png")
    argv = ["project", "--network", str(tiny_teacher_file()), "--target", str(faces), "--aligned"]
    argv += ["--steps", "0", "--device", "cpu"]

    def codes(out: str, *extra: str) -> np.ndarray:
        assert main([*argv, "--encoder", str(fb), *extra, "--outdir", str(tmp_path / out)]) == 0
        return np.load(tmp_path / out / "projected_w.npz")["w"]

    E = load_encoder(fb)
    three = codes("p3")
    assert "after 3 pass(es)" in capsys.readouterr().err
    np.testing.assert_allclose(three, encode_images(E, crops, G=G).numpy(), atol=1e-5)
    one = codes("p1", "--passes", "1")
    np.testing.assert_allclose(one, encode_images(E, crops, passes=1).numpy(), atol=1e-5)
    assert np.abs(one - three).max() > 0.01
    single = _trained_encoder(tmp_path)
    assert main([*argv, "--encoder", str(single), "--passes", "2", "--outdir", "x"]) == 1
    assert "makes one pass" in capsys.readouterr().err
    assert main([*argv[:-4], "--steps", "5", "--passes", "2", "--outdir", "x"]) == 1
    assert "needs --encoder" in capsys.readouterr().err


def test_training_with_photos_uses_them_without_codes(G, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    with torch.no_grad():
        ws = G.mapping(torch.randn(6, G.z_dim), None, truncation_psi=0.8)
        imgs = G.synthesis(ws, noise_mode="const", force_fp32=True)
    for i, im in enumerate(((imgs * 127.5 + 128).clamp(0, 255)).to(torch.uint8)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(photos / f"{i}.png")
    cfg = _cfg(tmp_path, data=str(photos), real_fraction=0.25, kimg=0.032, tick_kimg=0.032)
    encoder_loop(cfg, progress=False)
    stats = json.loads((Path(cfg.outdir) / "stats.jsonl").read_text().splitlines()[-1])
    assert "Loss/photos_image" in stats and "Loss/photos_delta" in stats
    assert "Loss/photos_latent" not in stats and "Loss/latent" in stats
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(small / "a.png")
    with pytest.raises(Exception, match="16x16 but the network is 32x32"):
        encoder_loop(_cfg(tmp_path, data=str(small), outdir=str(tmp_path / "r3")), progress=False)


def test_photo_stream_follows_the_dataset_order_and_degrades_with_the_step_seed(tmp_path):
    from teacher.dataset import ImageDataset, index_stream
    from teacher.encoder_train import load_photos

    folder = tmp_path / "p"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    ds = ImageDataset(folder)
    cfg = EncoderConfig(seed=3, degrade_prob=0.0, jpeg_prob=0.0)
    target, inp = load_photos(ds, cfg, seed=1, start=4, n=3, device=torch.device("cpu"))
    idx = index_stream(5, 3, 4, 3)  # items 4..6 of the shuffled stream (crosses an epoch)
    want = torch.tensor([40.0 * int(i) for i in idx]) / 127.5 - 1
    torch.testing.assert_close(target[:, 0, 0, 0], want)
    assert torch.equal(inp, target)  # no degradation asked for


def test_inspect_describes_an_encoder_file(G, tmp_path, capsys):
    E = encoder_for(G, TINY_ARCH, samples=200)
    path = save_encoder(E, tmp_path / "e.safetensors", {"file": "base.safetensors", "sha256": "ab"})
    assert main(["inspect", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "teacher.encoder" and info["generator"]["file"] == "base.safetensors"
    assert info["parameters"] == sum(p.numel() for p in E.parameters())


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of every step's samples and the
    gradients are averaged, so the trained encoder equals one process's."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "from common.runs import init_distributed\n"
        "from teacher.encoder_train import make_config, training_loop\n"
        f"cfg = make_config('tiny', dict(network={str(tiny_teacher_file())!r}, outdir=sys.argv[1],"
        f" channel_base=256, channel_max=32, head_channels=4, hidden=64, batch=8, kimg=0.024,"
        " tick_kimg=0.024, eval_n=0, grid_n=0, dfeat_weight=0.0))\n"
        "training_loop(cfg, init_distributed(), progress=False)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    one = [sys.executable, str(script), str(tmp_path / "one")]
    for cmd in (run + [str(script), str(tmp_path / "two")], one):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    a = load_encoder(tmp_path / "one" / "encoder.safetensors")
    b = load_encoder(tmp_path / "two" / "encoder.safetensors")
    # The codes agree. (Parameters agree too, except the biases of convolutions whose group norm
    # has one channel per group: their gradient is zero up to rounding, which Adam's
    # normalisation turns into steps of the learning rate's size; they cannot change an output.)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-4, rtol=1e-4)
    assert not torch.equal(a.to_delta.weight, torch.zeros_like(a.to_delta.weight))  # it trained


def test_toonify_with_an_encoder_and_no_steps_renders_the_encoders_code(tmp_path, capsys):
    """``toonify --encoder FILE --steps 0``: the saved latent is the encoder's code of the
    aligned face (recomputed here from ``faces.align``) and the toon crop its blended render."""
    from skimage.data import astronaut

    from faces.align import align
    from teacher.blend import blend_generators
    from tests.conftest import randomize_

    torch.manual_seed(1)
    base = randomize_(tiny_generator(img_resolution=32), seed=1)
    toon = randomize_(tiny_generator(img_resolution=32), seed=2)
    base_path = save_network(base, tmp_path / "base.safetensors")
    blended = blend_generators(base, toon, swap_res=8)
    blended_path = save_network(blended, tmp_path / "blended.safetensors")
    E = encoder_for(base, TINY_ARCH, samples=500)
    with torch.no_grad():
        E.to_delta.bias.normal_(0, 0.3)
    from common.files import file_sha256

    enc = save_encoder(E, tmp_path / "e.safetensors", {"sha256": file_sha256(base_path)})
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).resize((256, 256), Image.Resampling.LANCZOS).save(photo)
    out = tmp_path / "toon"
    argv = ["toonify", "--base", str(base_path), "--blended", str(blended_path), "--photo"]
    argv += [
        str(photo),
        "--encoder",
        str(enc),
        "--steps",
        "0",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err  # the encoder was made for this base
    crop = align(np.asarray(Image.open(photo).convert("RGB")), size=32)[0].crop[:, :, :3]
    want = encode_images(load_encoder(enc), crop[None])
    got = torch.from_numpy(np.load(out / "projected_w.npz")["w"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        render = blended.synthesis(want, noise_mode="const", force_fp32=True)[0]
    expect = np.clip(np.floor(render.permute(1, 2, 0).numpy() * 127.5 + 128), 0, 255)
    saved = np.asarray(Image.open(out / "astronaut_face0_toon.png")).astype(float)
    assert np.abs(saved - expect).max() <= 1
    assert json.loads((out / "report.json").read_text())["start"] == str(enc)

"""StyleGAN2 losses against hand computations, and the generator step of the training loop.

Each expectation is computed here from the formulas of the StyleGAN2 papers (Karras et al. 2020,
"Analyzing and Improving the Image Quality of StyleGAN"; ADA, 2020), with the generator and the
discriminator called directly, not through ``StyleGAN2Loss``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from teacher import load_discriminator, load_generator
from teacher.loss import LatentDraw, StyleGAN2Loss
from teacher.train import training_loop
from tests.conftest import randomize_, tiny_discriminator, tiny_generator
from tests.teacher.test_train import tiny_cfg

TOL = dict(rtol=1e-5, atol=1e-6)  # float32, same operations in a different order


def _nets():
    G = randomize_(tiny_generator(), seed=1)
    D = randomize_(tiny_discriminator(), seed=2)
    return G, D


def _draw(G, n: int = 4, cutoff: int | None = None, seed: int = 0) -> LatentDraw:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn([n, G.z_dim], generator=g)
    mix = torch.randn([n, G.z_dim], generator=g)
    return LatentDraw(z, torch.zeros([n, 0]), mix, G.num_ws if cutoff is None else cutoff)


def _loss(G, D, **kw) -> StyleGAN2Loss:
    args = dict(r1_gamma=10.0, pl_weight=2.0, pl_decay=0.01, noise_mode="const")
    args.update(kw)
    return StyleGAN2Loss(G, D, None, **args)


def test_generator_loss_is_nonsaturating_logistic_over_the_global_batch() -> None:
    G, D = _nets()
    draw = _draw(G)
    got = _loss(G, D).g_main(draw, denom=8.0)
    ws = G.mapping(draw.z, draw.c)
    logits = D(G.synthesis(ws, noise_mode="const"), draw.c)
    expected = torch.log1p(torch.exp(-logits)).sum() / 8.0  # softplus(-l), summed, / global batch
    torch.testing.assert_close(got, expected, **TOL)


def test_style_mixing_takes_the_second_latent_from_the_cutoff_on() -> None:
    G, D = _nets()
    cutoff = 2
    draw = _draw(G, cutoff=cutoff)
    img, ws = _loss(G, D).run_G(draw)
    w1 = G.mapping(draw.z, draw.c)
    w2 = G.mapping(draw.mix_z, draw.c)
    assert torch.equal(ws[:, :cutoff], w1[:, :cutoff])
    assert torch.equal(ws[:, cutoff:], w2[:, cutoff:])
    assert not torch.equal(ws[:, cutoff:], w1[:, cutoff:])
    torch.testing.assert_close(img, G.synthesis(ws, noise_mode="const"), **TOL)
    _, ws_plain = _loss(G, D).run_G(_draw(G))  # cutoff num_ws: no mixing
    torch.testing.assert_close(ws_plain, w1, **TOL)


def test_discriminator_losses_and_r1_is_gamma_over_two_times_squared_gradient() -> None:
    G, D = _nets()
    real = torch.randn([4, 3, G.img_resolution, G.img_resolution]).clamp(-1, 1)
    c = torch.zeros([4, 0])
    loss = _loss(G, D, r1_gamma=6.0)

    main, logits = loss.d_real(real, c, main=True, r1=False, denom=5.0)
    ref_logits = D(real, c)
    torch.testing.assert_close(logits, ref_logits.detach(), **TOL)
    torch.testing.assert_close(main, F.softplus(-ref_logits).sum() / 5.0, **TOL)

    r1, _ = loss.d_real(real, c, main=False, r1=True, denom=5.0)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, c).sum(), x)
    expected = sum(6.0 / 2 * float(grad[i].pow(2).sum()) for i in range(4)) / 5.0
    assert float(r1) == pytest.approx(expected, rel=1e-4)

    # Central-difference check of the gradient the penalty is built on (one pixel;
    # the minibatch-std layer couples the samples, so the sum of all logits is differentiated).
    flat = int(grad.abs().argmax())  # the pixel with the largest gradient: well above fp32 noise
    eps = 1e-2
    up, down = real.clone().flatten(), real.clone().flatten()
    up[flat] += eps
    down[flat] -= eps
    with torch.no_grad():
        fd = (D(up.view_as(real), c).sum() - D(down.view_as(real), c).sum()).item() / (2 * eps)
    assert fd == pytest.approx(float(grad.flatten()[flat]), rel=0.05)

    draw = _draw(G)
    fake = loss.d_fake(draw, denom=4.0)
    img = G.synthesis(G.mapping(draw.z, draw.c), noise_mode="const")
    torch.testing.assert_close(fake, F.softplus(D(img, draw.c)).sum() / 4.0, **TOL)


def test_path_length_penalty_and_its_running_mean() -> None:
    G, D = _nets()
    draw = _draw(G, n=3)
    res = G.img_resolution
    y = torch.randn([3, 3, res, res], generator=torch.Generator().manual_seed(7)) / res
    loss = _loss(G, D, pl_weight=2.0, pl_decay=0.25)
    loss.pl_mean = torch.tensor(0.5)
    penalty, lengths = loss.g_pl(draw, y, denom=6.0)

    # |J_w^T y| per sample: the gradient of <G(w), y> w.r.t. each w_i, squared norm averaged
    # over the num_ws copies of w, square root.
    ws = G.mapping(draw.z, draw.c).detach().requires_grad_(True)
    (g,) = torch.autograd.grad((G.synthesis(ws, noise_mode="const") * y).sum(), ws)
    expected_len = torch.stack(
        [
            torch.sqrt(sum(g[i, k].pow(2).sum() for k in range(G.num_ws)) / G.num_ws)
            for i in range(3)
        ]
    )
    torch.testing.assert_close(lengths, expected_len, **TOL)
    expected = 2.0 * ((expected_len - 0.5) ** 2).sum() / 6.0
    torch.testing.assert_close(penalty, expected, **TOL)

    # a_new = a + decay * (mean - a)
    loss.update_pl_mean(torch.tensor(1.5))
    assert float(loss.pl_mean) == pytest.approx(0.5 + 0.25 * (1.5 - 0.5))


def test_generator_step_of_the_loop_lowers_the_generator_loss(tmp_path: Path) -> None:
    """One training step (G main only: no path length, no mixing, no augmentation) must move
    ``G`` itself, not only ``G_ema``, downhill on softplus(-D(G(z))) under the D it stepped
    against (the base's D: the D step comes after the G step)."""
    cfg = tiny_cfg(
        tmp_path,
        "one",
        kimg=0.008,
        tick_kimg=0.008,
        pl_weight=0.0,
        style_mixing_prob=0.0,
        noise_mode="const",
    )
    training_loop(cfg, progress=False)
    blob = torch.load(Path(cfg.outdir) / "resume-state.pt", map_location="cpu", weights_only=True)
    G0 = load_generator(cfg.base, which="G").requires_grad_(False)
    G1 = load_generator(cfg.base, which="G").requires_grad_(False)
    G1.load_state_dict(blob["G"])
    D0 = load_discriminator(cfg.base).requires_grad_(False)
    moved = [
        n for n, p in G1.named_parameters() if not torch.equal(p, dict(G0.named_parameters())[n])
    ]
    assert moved, "the G step left G unchanged"

    z = torch.randn([256, G0.z_dim], generator=torch.Generator().manual_seed(3))
    c = torch.zeros([256, 0])

    def g_loss(G) -> float:
        with torch.no_grad():
            img = G.synthesis(G.mapping(z, c), noise_mode="const", force_fp32=True)
            return float(F.softplus(-D0(img, c, force_fp32=True)).mean())

    before, after = g_loss(G0), g_loss(G1)
    assert after < before, (before, after)


def test_structure_term_is_the_weighted_distance_of_downsampled_renders_to_the_base() -> None:
    """softplus(-D(G(w))) + weight x sum over 4, 8 px of the mean squared difference between
    G(w) and the reference's G_ref(w), both box-averaged to that size; the reference gets no
    gradient."""
    G, D = _nets()
    ref = randomize_(tiny_generator(), seed=5).requires_grad_(True)
    draw = _draw(G)
    loss = _loss(G, D, structure_ref=ref, structure_weight=3.0, structure_res=8)
    got = loss.g_main(draw, denom=8.0)
    ws = G.mapping(draw.z, draw.c)
    img = G.synthesis(ws, noise_mode="const")
    with torch.no_grad():
        ref_img = ref.synthesis(ws, noise_mode="const")
    side = img.shape[2]
    dist = sum(
        (F.avg_pool2d(img, side // r) - F.avg_pool2d(ref_img, side // r)).square().mean((1, 2, 3))
        for r in (4, 8)
    )
    expected = (F.softplus(-D(img, draw.c)).sum() + 3.0 * dist.sum()) / 8.0
    torch.testing.assert_close(got, expected, **TOL)
    assert loss.last_structure == pytest.approx(float(dist.detach().mean()), rel=1e-5)
    got.backward()
    assert all(p.grad is None for p in ref.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.synthesis.parameters())
    plain = _loss(G, D).g_main(draw, denom=8.0)  # no reference: the plain loss
    assert float(got) > float(plain)


def test_structure_loss_keeps_the_fine_tuned_model_closer_to_its_base(tmp_path: Path) -> None:
    """The same short fine-tune with and without a strong structure loss: with it, G's renders
    downsampled to 8 px stay nearer the base's, and it is refused without a base."""
    from teacher.loss import structure_distance
    from teacher.train import TrainError

    z = torch.randn([64, 64], generator=torch.Generator().manual_seed(4))
    dists = {}
    for name, weight in (("plain", 0.0), ("structure", 200.0)):
        cfg = tiny_cfg(tmp_path, name, kimg=0.032, tick_kimg=0.032, glr=0.01,
                       structure_weight=weight, structure_res=8)  # fmt: skip
        training_loop(cfg, progress=False)
        blob = torch.load(Path(cfg.outdir) / "resume-state.pt", map_location="cpu")
        G0 = load_generator(cfg.base, which="G_ema").requires_grad_(False)
        G1 = load_generator(cfg.base, which="G").requires_grad_(False)
        G1.load_state_dict(blob["G"])
        with torch.no_grad():
            ws = G0.mapping(z[:, : G0.z_dim], None)
            a = G0.synthesis(ws, noise_mode="const", force_fp32=True)
            b = G1.synthesis(ws, noise_mode="const", force_fp32=True)
        dists[name] = float(structure_distance(b, a, 8).mean())
        stats = (Path(cfg.outdir) / "stats.jsonl").read_text()
        assert ("Loss/G/structure" in stats) == (weight > 0)
    assert dists["structure"] < 0.7 * dists["plain"], dists
    with pytest.raises(TrainError, match="give --base"):
        training_loop(tiny_cfg(tmp_path, "nobase", base="", structure_weight=1.0), progress=False)

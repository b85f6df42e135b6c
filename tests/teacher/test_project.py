"""Projection (inversion) into the generator, the teacher's toonify path, identity distance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from teacher import load_generator, save_network
from teacher.blend import blend_generators
from teacher.cli import main
from teacher.project import ProjectConfig, ProjectError, project, psnr, save_projected_w
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def G():
    return load_generator(shared_file("fixtures", "tiny32.pkl"))


def _targets(G, seed: int = 5, n: int = 2, mixed: bool = False) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        ws = G.mapping(torch.randn(n, G.z_dim), None, truncation_psi=0.7)
        if mixed:  # a different w for the fine layers: a point of W+ that W cannot reach
            other = G.mapping(torch.randn(n, G.z_dim), None, truncation_psi=0.7)
            ws[:, 4:] = other[:, 4:]
        return G.synthesis(ws, noise_mode="const", force_fp32=True)


def test_psnr_formula():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full_like(a, 0.2)  # mse 0.04 -> 10 log10(4 / 0.04) = 20 dB
    assert psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)


def test_projection_recovers_a_rendered_latent(G):
    """Targets rendered from known latents (noise const): W+ and W both reach >= 30 dB."""
    target = _targets(G)
    cfg = dict(optimize_noise=False, w_avg_samples=2000)
    wplus = project(G, target, ProjectConfig(space="w+", steps=800, **cfg))
    w = project(G, target, ProjectConfig(space="w", steps=400, **cfg))
    assert wplus.ws.shape == (2, G.num_ws, G.w_dim) and w.ws.shape == (2, G.num_ws, G.w_dim)
    assert psnr(wplus.images, target).min() >= 30.0
    assert psnr(w.images, target).min() >= 30.0
    # In W every layer gets the same w.
    assert torch.equal(w.ws[:, 0], w.ws[:, -1])
    # The latents replay: rendering them again gives the reconstruction.
    with torch.no_grad():
        again = G.synthesis(wplus.ws, noise_mode="const", force_fp32=True)
    assert torch.allclose(again, wplus.images, atol=1e-5)


def test_wplus_beats_w_on_targets_outside_w(G):
    target = _targets(G, seed=7, mixed=True)
    cfg = dict(steps=500, optimize_noise=False, w_avg_samples=2000)
    a = psnr(project(G, target, ProjectConfig(space="w+", **cfg)).images, target)
    b = psnr(project(G, target, ProjectConfig(space="w", **cfg)).images, target)
    assert (a - b).mean() > 3.0, (a, b)


def test_noise_optimization_keeps_maps_normalised(G):
    target = _targets(G, n=1)
    res = project(G, target, ProjectConfig(steps=30, optimize_noise=True, w_avg_samples=500))
    assert res.noise and all(v.shape[-1] >= 4 for v in res.noise.values())
    for v in res.noise.values():
        assert abs(float(v.mean())) < 1e-4 and float(v.square().mean()) == pytest.approx(
            1, abs=1e-3
        )
    # The user's generator is untouched.
    assert all(not b.requires_grad for b in G.buffers())


def test_vgg_distance_with_a_stand_in_network(G, tmp_path):
    class StandIn(torch.nn.Module):
        def forward(self, x: torch.Tensor, resize_images: bool = True, return_lpips: bool = False):
            if resize_images or not return_lpips:
                raise RuntimeError("called with the wrong flags")
            f = torch.nn.functional.avg_pool2d(x / 255.0, 4).flatten(1)
            return f / f.square().sum(dim=1, keepdim=True).sqrt()

    path = tmp_path / "vgg16.pt"
    torch.jit.script(StandIn()).save(str(path))
    target = _targets(G, n=1)
    res = project(
        G, target, ProjectConfig(steps=60, optimize_noise=False, w_avg_samples=500), vgg16=path
    )
    assert res.losses[-1, 0] < res.losses[0, 0]
    with pytest.raises(ProjectError, match="not found"):
        project(G, target, ProjectConfig(steps=1, loss="vgg"), vgg16=tmp_path / "missing.pt")


def test_projected_w_npz_layout(tmp_path):
    ws = torch.randn(3, 8, 64)
    path = save_projected_w(tmp_path / "projected_w.npz", ws, names=["a", "b", "c"])
    data = np.load(path)
    assert data["w"].dtype == np.float32 and data["w"].shape == (3, 8, 64)
    assert np.array_equal(data["w"], ws.numpy()) and list(data["names"]) == ["a", "b", "c"]


def test_project_cli_on_aligned_crops(G, tmp_path, capsys):
    crops = tmp_path / "crops"
    crops.mkdir()
    for i, img in enumerate(_targets(G, n=2)):
        arr = ((img.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).round().byte().numpy()
        Image.fromarray(arr).save(crops / f"face{i}.png")
    out = tmp_path / "out"
    rc = main(
        [
            "project",
            "--network",
            str(shared_file("fixtures", "tiny32.pkl")),
            "--target",
            str(crops),
            "--aligned",
            "--steps",
            "20",
            "--outdir",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    data = np.load(out / "projected_w.npz")
    assert data["w"].shape == (2, G.num_ws, G.w_dim) and list(data["names"]) == ["face0", "face1"]
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["images"]] == ["face0", "face1"]
    assert all(np.isfinite(r["psnr_db"]) for r in report["images"])
    assert (out / "face0_proj.png").exists() and (out / "face1_target.png").exists()


def test_toonify_cli_end_to_end(G, tmp_path):
    photo = shared_file("faces", "obama_small.jpg")
    base = shared_file("fixtures", "tiny32.pkl")
    other = load_generator(base)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name.startswith("synthesis.b4") or name.startswith("synthesis.b8"):
                p.add_(torch.randn_like(p) * 0.3)
    blended = save_network(blend_generators(other, G, swap_res=8), tmp_path / "blend.safetensors")
    out = tmp_path / "toon"
    rc = main(
        [
            "toonify",
            "--base",
            str(base),
            "--blended",
            str(blended),
            "--photo",
            str(photo),
            "--steps",
            "10",
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    with Image.open(photo) as im:
        size = im.size
    with Image.open(out / "obama_small_toon.png") as res:
        assert res.size == size
    report = json.loads((out / "report.json").read_text())
    assert report["faces"] == 1 and set(report["timings"]) >= {"align_s", "project_s", "render_s"}
    assert (out / "obama_small_face0_toon.png").exists()


def test_identity_distance_separates_people():
    from faces.align import align
    from teacher.identity import SAME_PERSON_THRESHOLD, identity_distance

    a = align(shared_file("faces", "obama_small.jpg"), size=256)[0].crop
    b = align(shared_file("faces", "biden.jpg"), size=256)[0].crop
    assert identity_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert identity_distance(a, np.ascontiguousarray(a[:, ::-1])) < SAME_PERSON_THRESHOLD
    assert identity_distance(a, b) > SAME_PERSON_THRESHOLD


def test_projection_says_which_loss_terms_it_uses(tmp_path, capsys):
    from teacher.cli_project import loss_terms

    kind, terms, why = loss_terms("auto", None, 0.1, "base.safetensors", has_d=False)
    assert kind == "pixel" and terms == ["pixel pyramid mse"]
    assert "base.safetensors holds no discriminator" in why and "no --vgg16" in why
    kind, terms, why = loss_terms("auto", None, 0.1, "base.safetensors", has_d=True)
    assert terms == ["pixel pyramid mse", "0.1 x discriminator features"]
    assert loss_terms("auto", "vgg16.pt", 0.1, "b", has_d=True)[:2] == ("vgg", ["vgg16 perceptual"])
    assert "--dfeat-weight 0" in loss_terms("pixel", None, 0.0, "b", has_d=True)[2]
    # The command prints it and records it in report.json.
    G = load_generator(shared_file("fixtures", "tiny32.pkl"))
    crops = tmp_path / "crops"
    crops.mkdir()
    arr = ((_targets(G, n=1)[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).round().byte()
    Image.fromarray(arr.numpy()).save(crops / "face0.png")
    g_only = tmp_path / "g.safetensors"
    assert main(["import", str(shared_file("fixtures", "tiny32.pkl")), str(g_only), "--which",
                 "G_ema"]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["project", "--network", str(g_only), "--target", str(crops), "--aligned"]
    argv += ["--steps", "2", "--outdir", str(tmp_path / "out"), "--device", "cpu"]
    assert main(argv) == 0
    assert "project: loss = pixel pyramid mse (" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["loss"] == "pixel" and report["loss_terms"] == ["pixel pyramid mse"]
    assert "holds no discriminator" in report["loss_why"]


def test_toonify_renders_the_blend_of_the_projected_latent_and_pastes_it(tmp_path):
    """The saved toon crop is the *blended* generator's render of the saved latent (not the
    base's), and the saved photo is that crop pasted into the photo: each recomputed here from
    the files. Networks built here; photo ``skimage.data.astronaut()`` (public domain)."""
    from skimage.data import astronaut

    from faces.align import align, paste_back
    from tests.conftest import randomize_, tiny_generator

    torch.manual_seed(1)
    base = randomize_(tiny_generator(img_resolution=32), seed=1)
    toon = randomize_(tiny_generator(img_resolution=32), seed=2)
    base_path = save_network(base, tmp_path / "base.safetensors")
    blended_path = save_network(blend_generators(base, toon, swap_res=8), tmp_path / "bl.st")
    blended = load_generator(blended_path)
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).resize((256, 256), Image.Resampling.LANCZOS).save(photo)
    out = tmp_path / "toon"
    argv = ["toonify", "--base", str(base_path), "--blended", str(blended_path)]
    argv += ["--photo", str(photo), "--steps", "5", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0

    ws = torch.from_numpy(np.load(out / "projected_w.npz")["w"])
    assert ws.shape == (1, base.num_ws, base.w_dim)

    def render(G) -> np.ndarray:  # NVIDIA's uint8 convention: floor(x * 127.5 + 128), clipped
        with torch.no_grad():
            x = G.synthesis(ws, noise_mode="const", force_fp32=True)[0].permute(1, 2, 0)
        return np.clip(np.floor(x.numpy() * 127.5 + 128), 0, 255).astype(int)

    crop = np.asarray(Image.open(out / "astronaut_face0_toon.png")).astype(int)
    assert np.abs(crop - render(blended)).max() <= 1
    assert np.abs(crop - render(base)).mean() > 10  # the blend, not the base
    src = np.asarray(Image.open(photo).convert("RGB"))
    faces = align(src, size=32)
    want = paste_back(src, faces, [crop.astype(np.uint8)]).astype(int)
    got = np.asarray(Image.open(out / "astronaut_toon.png").convert("RGB")).astype(int)
    assert np.abs(got - want).max() <= 1
    assert np.abs(got - src).max() > 50  # pasted: the photo changed


def test_pixel_distance_with_and_without_the_pyramid_against_a_hand_computation():
    """The pyramid sums the MSE at 32 and 16 px (2x2 means); without it, the 32 px MSE alone."""
    from teacher.project import PixelDistance

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand([2, 3, 32, 32], generator=g), torch.rand([2, 3, 32, 32], generator=g)
    full = (a - b).square().flatten(1).mean(1)
    half = lambda x: x.reshape(2, 3, 16, 2, 16, 2).mean((3, 5))  # noqa: E731
    coarse = (half(a) - half(b)).square().flatten(1).mean(1)
    for pyramid, want in ((True, full + coarse), (False, full)):
        dist = PixelDistance(None, pyramid=pyramid)
        torch.testing.assert_close(dist(dist.features(a), b), want)
    from teacher.cli_project import loss_terms

    assert loss_terms("pixel", None, 0.0, "b", has_d=False, pyramid=False)[1] == ["pixel mse"]

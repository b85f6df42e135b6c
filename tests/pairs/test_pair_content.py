"""The content of z-latent pairs, against renders computed here independently.

``test_generate.py`` checks that a pair is reproducible; this file checks that it is the *right*
pair: for pair k, src is the base's render and dst the toon's render of the same w, with
w = base.mapping(z_k, truncation psi) and z_k = ``RandomState(seed + k).randn(z_dim)``
(the documented recipe). Swapped networks, different latents for src and dst, a wrong
truncation or a wrong seed all fail here.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pairs.generate import generate
from pairs.job import GenerateConfig
from teacher.io import save_network
from tests.conftest import randomize_, tiny_generator

SEED, COUNT, PSI = 11, 6, 0.6


def _read_shards(folder: Path) -> dict[int, dict[str, np.ndarray]]:
    """Every pair's images by index, read with tarfile and Pillow (not the project's reader)."""
    pairs: dict[int, dict[str, np.ndarray]] = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                if ext in ("src.png", "dst.png"):
                    data = tf.extractfile(m).read()
                    pairs.setdefault(int(key), {})[ext] = np.asarray(Image.open(io.BytesIO(data)))
    return pairs


def _render(G, ws: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        img = G.synthesis(ws, noise_mode="const", force_fp32=True)
    return ((img * 127.5 + 128).clamp(0, 255).floor()).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("content")
    base = randomize_(tiny_generator(), seed=1)
    toon = randomize_(tiny_generator(), seed=2)
    torch.manual_seed(5)
    with torch.no_grad():  # a w_avg away from zero, so truncation visibly matters
        base.mapping.w_avg.copy_(torch.randn(base.w_dim))
    save_network(base, tmp / "base.safetensors")
    save_network(toon, tmp / "toon.safetensors")
    cfg = GenerateConfig(
        out=str(tmp / "pairs"),
        base=str(tmp / "base.safetensors"),
        toon=str(tmp / "toon.safetensors"),
        count=COUNT,
        seed=SEED,
        truncation_psi=PSI,
        noise="const",
        batch=COUNT,
        device="cpu",
        workers=0,
        threads=1,
    )
    generate(cfg, progress=False, log=None)
    return base.eval(), toon.eval(), _read_shards(tmp / "pairs")


def _expected_ws(base, psi: float, seed: int) -> torch.Tensor:
    z = np.stack([np.random.RandomState(seed + k).randn(base.z_dim) for k in range(COUNT)])
    z = torch.from_numpy(z.astype(np.float32))
    with torch.no_grad():
        w = base.mapping(z, None, truncation_psi=1.0)  # untruncated, then truncate by hand
        return base.mapping.w_avg + psi * (w - base.mapping.w_avg)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def test_src_is_the_base_and_dst_the_toon_render_of_the_same_truncated_w(dataset) -> None:
    base, toon, pairs = dataset
    assert sorted(pairs) == list(range(COUNT))
    ws = _expected_ws(base, PSI, SEED)
    src_ref, dst_ref = _render(base, ws), _render(toon, ws)
    for k in range(COUNT):
        # at most one level: float rounding between batch compositions may flip a pixel
        assert _max_diff(pairs[k]["src.png"], src_ref[k]) <= 1, k
        assert _max_diff(pairs[k]["dst.png"], dst_ref[k]) <= 1, k


def test_the_check_sees_wrong_recipes(dataset) -> None:
    """Each plausible mistake differs from the dataset by far more than the one-level tolerance."""
    base, toon, pairs = dataset
    ws = _expected_ws(base, PSI, SEED)
    wrong = {
        "swapped networks": (_render(toon, ws), _render(base, ws)),
        "no truncation": (
            _render(base, _expected_ws(base, 1.0, SEED)),
            _render(toon, _expected_ws(base, 1.0, SEED)),
        ),
        "seed off by one": (
            _render(base, _expected_ws(base, PSI, SEED + 1)),
            _render(toon, _expected_ws(base, PSI, SEED + 1)),
        ),
    }
    for name, (src, dst) in wrong.items():
        worst = max(
            max(_max_diff(pairs[k]["src.png"], src[k]), _max_diff(pairs[k]["dst.png"], dst[k]))
            for k in range(COUNT)
        )
        assert worst > 8, name


def test_encoded_pairs_render_the_encoders_code_of_each_photo(dataset, tmp_path) -> None:
    """``--encoder --photos``: src is photo k of the folder (sorted), dst the toon's render of
    the encoder's code of that photo, computed here with the encoder itself."""
    from pairs.shards import PairsError, read_manifest
    from teacher.encoder import encoder_for, load_encoder, save_encoder

    base, toon, _ = dataset
    torch.manual_seed(3)
    E = encoder_for(base, dict(channel_base=128, channel_max=16, head_channels=4, hidden=32), 500)
    with torch.no_grad():
        E.to_delta.bias.normal_(0, 0.5)  # layers differ: W+ codes
    enc = save_encoder(E, tmp_path / "enc.safetensors", {"file": "base", "sha256": ""})
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    imgs = {}
    for name in ("b.png", "a.png", "c.png"):  # written out of order: pairs follow sorted names
        imgs[name] = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(imgs[name]).save(photos / name)
    toon_file = tmp_path / "toon.safetensors"
    save_network(toon, toon_file)
    cfg = GenerateConfig(
        out=str(tmp_path / "pairs"), toon=str(toon_file), photos=str(photos), encoder=str(enc),
        batch=2, device="cpu", workers=0, threads=1,
    )  # fmt: skip
    generate(cfg, progress=False, log=None)
    got = _read_shards(tmp_path / "pairs")
    manifest = read_manifest(tmp_path / "pairs")
    assert manifest["config"]["latent_kind"] == "encoded" and manifest["count"] == 3
    assert manifest["config"]["encoder"]["file"] == "enc.safetensors"
    E = load_encoder(enc)
    for k, name in enumerate(sorted(imgs)):
        x = torch.from_numpy(imgs[name]).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            want = _render(toon, E(x))[0]
        assert np.array_equal(got[k]["src.png"], imgs[name]), k
        assert _max_diff(got[k]["dst.png"], want) <= 1, k
    # A black image's code (what the padding row holds) is not what pair 2 shows.
    with torch.no_grad():
        black = _render(toon, E(torch.full((1, 3, 16, 16), -1.0)))[0]
    assert _max_diff(got[2]["dst.png"], black) > 8
    for bad, msg in (
        (dict(latents=str(tmp_path / "w.npz")), "not both"),
        (dict(photos=None), "--photos DIR"),
    ):
        with pytest.raises(PairsError, match=msg):
            generate(GenerateConfig(**{**cfg.__dict__, **bad}), progress=False, log=None)

    # A feedback encoder runs its passes with the base rendering the codes between them.
    F = encoder_for(
        base, dict(channel_base=128, channel_max=16, head_channels=4, hidden=32, feedback=1,
                   passes=2), 500,
    )  # fmt: skip
    with torch.no_grad():
        F.to_delta.bias.normal_(0, 0.5)
    fb = save_encoder(F, tmp_path / "fb.safetensors", {"file": "base", "sha256": ""})
    fb_cfg = GenerateConfig(**{**cfg.__dict__, "encoder": str(fb), "out": str(tmp_path / "fbp")})
    with pytest.raises(PairsError, match="give that generator as --base"):
        generate(fb_cfg, progress=False, log=None)
    base_file = tmp_path / "base.safetensors"
    save_network(base, base_file)
    generate(
        GenerateConfig(**{**fb_cfg.__dict__, "base": str(base_file)}), progress=False, log=None
    )
    got = _read_shards(tmp_path / "fbp")
    F = load_encoder(fb)
    for k, name in enumerate(sorted(imgs)):
        x = torch.from_numpy(imgs[name]).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            ws = F(x)
            recon = base.synthesis(ws, noise_mode="const", force_fp32=True)
            ws = F.codes(*F.parts(x, recon), start=ws)  # the second pass
            want = _render(toon, ws)[0]
        assert _max_diff(got[k]["dst.png"], want) <= 1, k


def test_delta_targets_add_the_teachers_change_to_the_photo(dataset, tmp_path) -> None:
    """``--target delta``: dst = photo + toon(w) - base(w) for the photo's projected w (photos
    resized to the generator's resolution with Lanczos first), computed here by hand; the
    default target is the toon render; z pairs and a missing --base are refused."""
    from pairs.shards import PairsError, read_manifest

    base, toon, _ = dataset
    res = base.img_resolution
    base_file, toon_file = tmp_path / "base.safetensors", tmp_path / "toon.safetensors"
    save_network(base, base_file)
    save_network(toon, toon_file)
    torch.manual_seed(4)
    with torch.no_grad():
        ws = base.mapping(torch.randn(3, base.z_dim), None) + 0.3 * torch.randn(3, base.num_ws, 1)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    imgs = []
    for i in range(3):  # twice the resolution: resized before the change is added
        imgs.append(rng.integers(0, 256, (2 * res, 2 * res, 3), dtype=np.uint8))
        Image.fromarray(imgs[-1]).save(photos / f"p{i}.png")
    np.savez(tmp_path / "w.npz", w=ws.numpy(), names=np.array(["p0", "p1", "p2"]))
    cfg = GenerateConfig(
        out=str(tmp_path / "delta"), toon=str(toon_file), base=str(base_file),
        latents=str(tmp_path / "w.npz"), photos=str(photos), target="delta",
        batch=2, device="cpu", workers=0, threads=1,
    )  # fmt: skip
    generate(cfg, progress=False, log=None)
    got = _read_shards(tmp_path / "delta")
    assert read_manifest(tmp_path / "delta")["config"]["target"] == "delta"
    with torch.no_grad():
        change = (
            toon.synthesis(ws, noise_mode="const", force_fp32=True)
            - base.synthesis(ws, noise_mode="const", force_fp32=True)
        ).permute(0, 2, 3, 1).numpy() * 127.5  # fmt: skip
    for k in range(3):
        small = np.asarray(Image.fromarray(imgs[k]).resize((res, res), Image.Resampling.LANCZOS))
        want = np.clip(np.floor(small + change[k] + 0.5), 0, 255)
        assert np.array_equal(got[k]["src.png"], small), k
        assert _max_diff(got[k]["dst.png"], want) <= 1, k
        # not the toon render of the code, nor the photo unchanged
        assert _max_diff(got[k]["dst.png"], _render(toon, ws[k : k + 1])[0]) > 8, k
        assert _max_diff(got[k]["dst.png"], small) > 8, k
    for bad, msg in (
        (dict(base=None), "--target delta needs --base"),
        (dict(latents=None, photos=None, count=2), "applies to real-photo pairs"),
        (dict(target="blend"), "--target must be one of"),
    ):
        with pytest.raises(PairsError, match=msg):
            generate(
                GenerateConfig(**{**cfg.__dict__, **bad, "out": str(tmp_path / "x")}),
                progress=False,
                log=None,
            )

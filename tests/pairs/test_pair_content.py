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

"""Shared test helpers: where the shared fixtures live, and small network factories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TOON_SHARED", REPO.parent / "shared"))


def shared_file(*parts: str) -> Path:
    """Path of a file in the shared material (NVIDIA's reference snapshots and outputs, and
    the photos of people the identity tests compare); skips the test when it is absent.
    Tests that only need *a* teacher or *a* photo use :func:`project_photo` and networks
    built by the tests instead."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"needs the shared reference fixture {path} (NVIDIA parity / identity tests only; "
            "set TOON_SHARED to the shared folder)"
        )
    return path


_PHOTOS: dict[str, Path] = {}
PHOTO_NAMES = ("one.jpg", "two.jpg", "rgba.png", "exif.jpg")


def project_photo(name: str) -> Path:
    """A test photo the project makes from ``skimage.data.astronaut()`` (NASA, public
    domain), written once per process to a temporary folder:

    - ``one.jpg``: 320 x 240, one face (detector box about x 101-174, y 45-118);
    - ``two.jpg``: 640 x 300, the astronaut at 120 % beside her mirror image at 100 % (two
      faces, boxes of about 105 and 88 px, the left one larger);
    - ``rgba.png``: ``one`` as RGBA, opaque in an oval around the face, falling softly to
      transparent outside it;
    - ``exif.jpg``: a 240 x 320 portrait stored on its side (320 x 240) with EXIF
      orientation 6, so it shows upright only when the orientation is applied.
    """
    if name not in PHOTO_NAMES:
        raise ValueError(f"no project photo {name!r}; choose from {', '.join(PHOTO_NAMES)}")
    if not _PHOTOS:
        import tempfile

        import numpy as np
        from PIL import Image
        from skimage.data import astronaut

        folder = Path(tempfile.mkdtemp(prefix="toon-photos-"))
        full = Image.fromarray(astronaut())  # 512 x 512
        one = full.crop((0, 0, 512, 384)).resize((320, 240), Image.Resampling.LANCZOS)
        rgb = np.asarray(one)
        big = full.resize((614, 614), Image.Resampling.LANCZOS).crop((70, 20, 470, 320))
        mirror = full.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((150, 0, 390, 300))
        two = np.concatenate([np.asarray(big), np.asarray(mirror)], axis=1)
        yy, xx = np.mgrid[:240, :320]
        r = np.hypot((xx - 137) / 60, (yy - 82) / 75)  # an oval around the face
        alpha = np.rint(255 * np.clip((1.3 - r) / 0.3, 0, 1)).astype(np.uint8)
        portrait = full.crop((64, 0, 448, 512)).resize((240, 320), Image.Resampling.LANCZOS)
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to show
        one.save(folder / "one.jpg", quality=92)
        Image.fromarray(two).save(folder / "two.jpg", quality=92)
        Image.fromarray(np.dstack([rgb, alpha])).save(folder / "rgba.png")
        portrait.transpose(Image.Transpose.ROTATE_90).save(
            folder / "exif.jpg", quality=92, exif=exif.tobytes()
        )
        _PHOTOS.update({n: folder / n for n in PHOTO_NAMES})
    return _PHOTOS[name]


def run_fresh_python(code: str, timeout: float = 60) -> str:
    """Run ``code`` in a new interpreter with the repository on the path (a clean
    ``sys.modules``); assert it succeeds and return its stdout, stripped."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def tiny_generator(**overrides) -> torch.nn.Module:
    """A small random generator (16 px, 32 channels) for fast tests."""
    from teacher.networks import Generator

    kw = dict(
        z_dim=32,
        c_dim=0,
        w_dim=32,
        img_resolution=16,
        mapping_layers=2,
        channel_base=512,
        channel_max=32,
    )
    kw.update(overrides)
    return Generator(**kw).eval()


def tiny_discriminator(**overrides) -> torch.nn.Module:
    """A small random discriminator (16 px, 32 channels) for fast tests."""
    from teacher.networks import Discriminator

    kw = dict(c_dim=0, img_resolution=16, channel_base=512, channel_max=32, mbstd_group_size=2)
    kw.update(overrides)
    return Discriminator(**kw).eval()


TINY_TEACHER_NAME = "tiny32-local.safetensors"
_TINY_TEACHER: list[Path] = []


def tiny_teacher_file() -> Path:
    """A 32 px teacher built here in the shape of NVIDIA's ``tiny32`` fixture (z = w = 64,
    2 mapping layers, channel base 1024 / max 64, float16 blocks from 8 px, conv clamp 256),
    with random weights, non-zero biases and noise strengths (:func:`randomize_`) and
    ``w_avg`` the mean w of 512 random z: for the tests that need *a* teacher, not NVIDIA's.
    Written once per process to a temporary folder as ``tiny32-local.safetensors``."""
    if not _TINY_TEACHER:
        import tempfile

        from teacher.io import save_network

        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(32)
            G = randomize_(
                tiny_generator(
                    z_dim=64,
                    w_dim=64,
                    img_resolution=32,
                    mapping_layers=2,
                    channel_base=1024,
                    channel_max=64,
                    num_fp16_res=4,
                    conv_clamp=256,
                ),
                seed=32,
            )
            with torch.no_grad():
                G.mapping.w_avg.copy_(G.mapping(torch.randn(512, 64), None)[:, 0].mean(0))
        finally:
            torch.random.set_rng_state(state)
        folder = Path(tempfile.mkdtemp(prefix="toon-teacher-"))
        _TINY_TEACHER.append(save_network(G, folder / TINY_TEACHER_NAME))
    return _TINY_TEACHER[0]


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@torch.no_grad()
def randomize_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every bias and noise strength a random non-zero value (defaults are zero), like a
    trained network, so tests see every term. FIR filters are left alone."""
    g = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        if name.endswith("bias") or name.endswith("noise_strength"):
            scale = 0.2 if not name.endswith("affine.bias") else 0.1
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` when no CUDA GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

"""Small generated video clips with a known answer, for the video tests and bench/video.py.

A clip is a still photo (a procedural face from ``demo.synthetic`` in a cluttered scene) seen
by a camera that moves by a known similarity transform per frame (a few pixels of sway, a
fraction of a degree of roll, a fraction of a percent of zoom), optionally with fresh sensor
noise in every frame, encoded with the same PyAV the product uses. Because the motion is known,
a face square found in frame ``t`` can be mapped back onto the still photo, where a steady
tracker's square does not move.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image


def still_scene(width: int, height: int, margin: int, face: float, seed: int = 7):
    """A photo of one face, ``margin`` px larger than the frame on every side; the face's FFHQ
    square (``face`` px) sits a little above the frame's centre. Returns (image, landmarks)."""
    from demo.synthetic import render_photo_scene, sample_params

    params = sample_params(np.random.default_rng(seed))
    cx, cy = margin + width / 2, margin + height * 0.45
    box = (cx - face / 2, cy - face / 2, cx + face / 2, cy + face / 2)
    return render_photo_scene(
        params,
        canvas=(width + 2 * margin, height + 2 * margin),
        face_box=box,
        rng=np.random.default_rng(seed),
    )


def camera_path(
    n: int,
    width: int,
    height: int,
    margin: int,
    *,
    sway_px: float = 2.0,
    roll_deg: float = 0.3,
    zoom: float = 0.005,
    period: float = 48.0,
) -> list[np.ndarray]:
    """Per frame, the 3x3 matrix taking frame pixel (x, y, 1) to still-photo pixel: a slow
    smooth sway (up to ``2 * sway_px``), roll (up to ``2 * roll_deg``) and zoom (up to ``2 *
    zoom``) about the frame's centre, starting at rest (each a 1 - cos curve). All zero: a
    static camera."""
    out = []
    c = np.array([width / 2, height / 2])
    for t in range(n):
        ph = 2 * math.pi * t / period
        dx, dy = sway_px * (1 - math.cos(ph)), 0.6 * sway_px * (1 - math.cos(0.7 * ph))
        a = math.radians(roll_deg * (1 - math.cos(0.5 * ph)))
        s = 1 + zoom * (1 - math.cos(0.8 * ph))
        r = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        m = np.eye(3)
        m[:2, :2] = r
        m[:2, 2] = c + margin + np.array([dx, dy]) - r @ c
        out.append(m)
    return out


def render_frames(
    still: np.ndarray,
    matrices: list[np.ndarray],
    width: int,
    height: int,
    noise: float = 0.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """The frames the camera sees (bicubic), each with fresh Gaussian noise of ``noise`` levels."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(still)
    shift = np.array([[1.0, 0, -0.5], [0, 1.0, -0.5], [0, 0, 1.0]])  # continuous -> index
    back = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]])
    frames = []
    for m in matrices:
        t = back @ m @ shift
        f = np.asarray(
            img.transform(
                (width, height),
                Image.Transform.AFFINE,
                tuple(t[:2].ravel()),
                Image.Resampling.BICUBIC,
            )
        )
        if noise:
            f = np.clip(np.rint(f + rng.normal(0, noise, f.shape)), 0, 255).astype(np.uint8)
        frames.append(f)
    return frames


def write_clip(
    path: Path,
    frames: list[np.ndarray],
    fps: int = 30,
    *,
    audio: str | None = "aac",
    crf: int = 18,
    preset: str = "veryfast",
    codec: str = "libx264",
    muxer: str | None = None,
) -> Path:
    """Encode ``frames`` (RGB) with PyAV; ``audio``: an audio codec for a 440 Hz tone as long as
    the video (``aac``, ``pcm_s16le``...) or None."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=muxer) as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            v.options = {"preset": preset, "crf": str(crf)}
        a = None
        if audio is not None:
            a = c.add_stream(audio, rate=44100)
            a.layout = "mono"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            c.mux(v.encode(vf))
        c.mux(v.encode(None))
        if a is not None:
            n = int(44100 * len(frames) / fps)
            fmt = "fltp" if audio != "pcm_s16le" else "s16"
            tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)
            step = 1024
            for i in range(0, n, step):
                chunk = tone[i : i + step][None]
                if fmt == "s16":
                    chunk = (chunk * 32767).astype(np.int16)
                else:
                    chunk = chunk.astype(np.float32)
                af = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
                af.sample_rate = 44100
                af.pts, af.time_base = i, Fraction(1, 44100)
                c.mux(a.encode(af))
            c.mux(a.encode(None))
    return path


def decode(path: Path) -> list[np.ndarray]:
    """Every frame of a video as RGB arrays."""
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def compensated_jitter(quads: list[np.ndarray], matrices: list[np.ndarray]) -> float:
    """Largest frame-to-frame move (px) of a face square's corners after mapping each frame's
    square onto the still photo with that frame's known camera matrix."""
    still = [(q @ m[:2, :2].T) + m[:2, 2] for q, m in zip(quads, matrices, strict=True)]
    steps = [np.linalg.norm(b - a, axis=1).max() for a, b in zip(still, still[1:], strict=False)]
    return float(max(steps)) if steps else 0.0


def frame_change(frames: list[np.ndarray], mask: np.ndarray | None = None) -> float:
    """Mean absolute change (levels) between consecutive frames, over ``mask`` if given."""
    diffs = []
    for a, b in zip(frames, frames[1:], strict=False):
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        diffs.append(float(d[mask].mean()) if mask is not None else float(d.mean()))
    return float(np.mean(diffs)) if diffs else 0.0

"""How close a fine-tuned teacher's drawing of a face comes to its game-style truth.

``python -m demo.finetune_check --toon runs/game/network-snapshot-000020.safetensors [--scenes 24]``

The protocol of demo/README.md's fine-tune table. ``--faces`` held-out photo-style faces (the
demo's held-out stream) are projected into the shipped base (W+, ``--steps`` steps; cached in
``--work`` per face count and step count), and for the projected codes w it reports, as L1 to
the game-style truth over the unchanged photo's L1 (1 = doing nothing, lower is better):

- ``render``: the fine-tuned model's render of w (constant noise; ``render_noise_none``
  without noise);
- ``delta``: the teacher's change applied to the photo itself, photo + toon(w) - base(w)
  (clipped; what a student can learn from z pairs at best), with constant and without noise;
- ``blends``: each swap level in both directions (``coarse_from_base``: levels up to R from
  the base, the rest from the fine-tuned model; ``coarse_from_toon``: the opposite), each with
  the judges' share called game style and identity error over the truth's;
- ``judges`` on the unblended render;
- with ``--scenes N``, ``user_path``: the teacher itself as a model through ``toon-infer``'s
  path on the outcome's ``N`` held-out scenes (:mod:`demo.outcome`; each aligned crop coded by
  the shipped encoder): ``delta`` (crop + toon(w) - base(w), what ``--target delta`` pairs
  teach) and ``render`` (toon(w), what render pairs teach), with the oracle for the share of
  the gap closed. ``--toon`` may be any generator of the base's architecture (a blend too).

The procedural truth is used for measurement only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from demo.diagnose import REPO


def held_out(n: int, size: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Photos, game-style truths and parameters of the first ``n`` held-out faces (the demo's
    held-out stream, :func:`demo.run.heldout_face`)."""
    from demo.run import heldout_face

    faces = [heldout_face(i, size) for i in range(n)]
    return np.stack([f[1] for f in faces]), np.stack([f[2] for f in faces]), [f[0] for f in faces]


def projected(base_file: Path, photos: np.ndarray, steps: int, work: Path) -> torch.Tensor:
    """W+ codes of ``photos`` in the base (``toon-teacher project``), cached in ``work``."""
    from PIL import Image

    from teacher.cli import main as teacher_main

    out = work / f"proj-{len(photos)}-{steps}"
    npz = out / "projected_w.npz"
    if not npz.exists():
        held = work / f"held-{len(photos)}"
        held.mkdir(parents=True, exist_ok=True)
        for i, photo in enumerate(photos):
            Image.fromarray(photo).save(held / f"face{i:02d}.png")
        argv = ["project", "--network", str(base_file), "--target", str(held), "--aligned"]
        argv += ["--space", "w+", "--steps", str(steps), "--batch", str(len(photos))]
        if teacher_main([*argv, "--device", "cpu", "--outdir", str(out)]) != 0:
            raise SystemExit("finetune_check: projection failed")
    data = np.load(npz)
    order = np.argsort([Path(str(n)).stem for n in data["names"]])
    return torch.from_numpy(data["w"][order])


def check(toon_file: Path, base_file: Path, faces: int, steps: int, work: Path) -> dict:
    """The report of the module docstring."""
    from demo.judges import game_truth_error, load_judges
    from teacher import load_generator
    from teacher.blend import blend_generators
    from teacher.sample import to_uint8

    base, toon = load_generator(base_file), load_generator(toon_file)
    size = base.img_resolution
    photos, games, params = held_out(faces, size)
    w = projected(base_file, photos, steps, work)

    def draw(G, noise: str = "const") -> np.ndarray:
        with torch.no_grad():
            return to_uint8(G.synthesis(w, noise_mode=noise, force_fp32=True))

    def ratio(img: np.ndarray) -> float:
        d = np.abs(img.astype(np.float64) - games).mean()
        return round(float(d / nothing), 4)

    nothing = np.abs(photos.astype(np.float64) - games).mean()
    judges_file = REPO / "demo" / "assets" / f"judges{size}.safetensors"
    judges = load_judges(judges_file) if judges_file.exists() else None
    truth_err = float(game_truth_error(judges, params).mean()) if judges is not None else 1.0

    def judged(img: np.ndarray) -> dict:
        if judges is None:
            return {}
        game = float(np.mean(judges.style_score(img) > 0.5))
        ident = float(judges.param_error(img, params).mean()) / truth_err
        return {"called_game": round(game, 3), "identity_over_truth": round(ident, 3)}

    def delta(noise: str) -> float:
        moved = photos.astype(np.float64) + draw(toon, noise) - draw(base, noise)
        return ratio(np.clip(moved, 0, 255))

    render = draw(toon)
    report = {
        "toon": str(toon_file),
        "faces": faces,
        "projection_steps": steps,
        "reconstruction": ratio(draw(base)),
        "render": ratio(render),
        "render_noise_none": ratio(draw(toon, "none")),
        "delta": delta("const"),
        "delta_noise_none": delta("none"),
        "judges": judged(render),
        "blends": {},
    }
    levels = [2**k for k in range(2, int(np.log2(size)))]
    for name, (low, high) in {
        "coarse_from_base": (base, toon),
        "coarse_from_toon": (toon, base),
    }.items():
        rows = {}
        for r in levels:
            img = draw(blend_generators(low, high, swap_res=r, mapping_from="low"))
            rows[str(r)] = {"ratio": ratio(img), **judged(img)}
        report["blends"][name] = rows
    return report


def teacher_models(toon, base, encoder) -> dict:
    """A teacher as two crop -> crop models (uint8 [N, S, S, 3]): ``delta`` (crop + toon(w) -
    base(w)) and ``render`` (toon(w)), w the encoder's code of the crop."""

    from teacher.encoder import encode_images
    from teacher.sample import to_uint8

    def model(kind: str):
        @torch.no_grad()
        def run(crops: np.ndarray) -> np.ndarray:
            ws = encode_images(encoder, crops, max(len(crops), 1), base)
            y = toon.synthesis(ws, noise_mode="const", force_fp32=True)
            if kind == "delta":
                x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1
                y = x + y - base.synthesis(ws, noise_mode="const", force_fp32=True)
            return to_uint8(y)

        return run

    return {"delta": model("delta"), "render": model("render")}


def user_path(toon_file: Path, base_file: Path, scenes: int) -> dict:
    """The teacher's delta and render as models through toon-infer's path (module docstring)."""
    from demo.diagnose import onnx_model
    from demo.judges import load_judges
    from demo.outcome import measure, oracle_asset, prepare
    from teacher import load_generator
    from teacher.encoder import load_encoder

    base, toon = load_generator(base_file).eval(), load_generator(toon_file).eval()
    E = load_encoder(REPO / "demo" / "assets" / "encoder32.safetensors").eval()
    size = base.img_resolution
    judges_file = REPO / "demo" / "assets" / f"judges{size}.safetensors"
    judges = load_judges(judges_file) if judges_file.exists() else None
    models = {"oracle": onnx_model(oracle_asset(size)), **teacher_models(toon, base, E)}
    rows = measure(models, prepare(scenes, size), judges)
    keys = ("ratio", "gap_closed", "better_than_nothing", "eyes_ratio", "outline_ratio", "judges")
    return {name: {k: rows[name].get(k) for k in keys} for name in ("delta", "render")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--toon", required=True, help="the fine-tuned generator (a snapshot)")
    ap.add_argument("--base", default=str(REPO / "demo" / "assets" / "base32.safetensors"))
    ap.add_argument("--faces", type=int, default=16, help="held-out faces (default 16)")
    ap.add_argument("--steps", type=int, default=400, help="projection steps (default 400)")
    ap.add_argument("--work", default=str(REPO / "demo" / "out-finetune-check"))
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", default=None, help="also write the report here (JSON)")
    ap.add_argument(
        "--scenes", type=int, default=0,
        help="also measure the teacher through toon-infer's path on N held-out scenes (24)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = check(Path(args.toon), Path(args.base), args.faces, args.steps, Path(args.work))
    if args.scenes:
        report["user_path"] = user_path(Path(args.toon), Path(args.base), args.scenes)
    text = json.dumps(report, indent=2)
    if args.out:
        from common.files import atomic_write_text

        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

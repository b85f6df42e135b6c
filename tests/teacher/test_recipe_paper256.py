"""The README's "With real weights" recipe at the real ``paper256`` architecture, one step each.

Random weights stand in for NVIDIA's CelebA-HQ base (nothing is downloaded) and random images
for the game set, so this checks what breaks only at real size (memory, shapes, dtypes, file
sizes), not quality: import keeps G, D and G_ema, the recipe's fine-tune command (preset
paper256 with its ADA and FreezeD flags, the per-pass batch chosen from the machine's memory,
only --batch and --kimg made small), blend-grid and blend, projection, the inversion encoder
(one step, then project and pairs with it), pair generation, student
training with its paper256 preset, ONNX export. About 5 minutes and 5 GiB peak RSS on 2 CPU cores.
"""

from __future__ import annotations

import copy
import json
import resource
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from teacher.io import read_networks, save_snapshot
from teacher.networks import Discriminator, Generator

pytestmark = pytest.mark.slow

# NVIDIA's celebahq-res256-mirror-paper256 networks (the arch our importer reads from them)
ARCH = dict(
    z_dim=512,
    c_dim=0,
    w_dim=512,
    img_resolution=256,
    mapping_layers=8,
    channel_base=16384,
    channel_max=512,
    num_fp16_res=4,
    conv_clamp=256,
)


def _run(main, argv: list[str]) -> None:
    assert main(argv) == 0, argv


def test_recipe_runs_at_paper256(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from pairs.cli import main as pairs_main
    from student.cli import main as student_main
    from teacher.cli import main as teacher_main

    torch.manual_seed(0)
    G = Generator(**ARCH)
    D = Discriminator(
        c_dim=0,
        img_resolution=256,
        img_channels=3,
        channel_base=16384,
        channel_max=512,
        num_fp16_res=4,
        conv_clamp=256,
        mbstd_group_size=8,
    )
    src = tmp_path / "celebahq-stand-in.safetensors"
    save_snapshot({"G": G, "D": D, "G_ema": copy.deepcopy(G)}, src, source={"file": "random"})
    del G, D
    game = tmp_path / "game256"
    game.mkdir()
    rs = np.random.RandomState(0)
    for i in range(4):
        Image.fromarray(rs.randint(0, 256, (256, 256, 3), dtype=np.uint8)).save(game / f"{i}.png")

    base = tmp_path / "base.safetensors"
    _run(teacher_main, ["import", str(src), str(base)])
    assert set(read_networks(base)) == {"G", "D", "G_ema"}

    run = tmp_path / "runs" / "game"
    argv = ["finetune", "--base", str(base), "--data", str(game), "--preset", "paper256"]
    argv += ["--kimg", "0.004", "--batch", "4", "--snap", "8", "--target", "0.5", "--mirror"]
    argv += ["--augpipe", "scale,xflip,noise", "--freezed", "10", "--outdir", str(run)]
    _run(teacher_main, argv + ["--quiet"])
    err = capsys.readouterr().err
    assert "finetune: 256px, cpu" in err and "pass(es) of" in err
    (snap,) = run.glob("network-snapshot-*.safetensors")
    stats = json.loads((run / "stats.jsonl").read_text().splitlines()[-1])
    assert stats["Progress/kimg"] == 0.004 and np.isfinite(stats["Loss/G/loss"])
    assert stats["Resources/peak_rss_gb"] > 0

    _run(
        teacher_main,
        ["blend-grid", "--low", str(base), "--high", str(snap), "--mapping-from", "low"]
        + ["--trunc", "0.7", "--seeds", "0", "--levels", "16", "--out", str(tmp_path / "g.png")],
    )
    blended = tmp_path / "blended.safetensors"
    _run(
        teacher_main,
        ["blend", "--low", str(base), "--high", str(snap), "--swap-res", "16"]
        + ["--mapping-from", "low", "--out", str(blended)],
    )
    _run(
        teacher_main,
        ["project", "--network", str(base), "--target", str(game / "0.png"), "--aligned"]
        + ["--steps", "1", "--space", "w+", "--outdir", str(tmp_path / "proj")],
    )
    assert "discriminator features" in capsys.readouterr().err  # D came with the import
    enc = tmp_path / "runs" / "encoder"
    _run(
        teacher_main,
        ["encoder", "train", "--network", str(base), "--data", str(game), "--outdir", str(enc)]
        + ["--kimg", "0.008", "--tick-kimg", "0.008", "--eval-n", "2", "--grid-n", "1", "--quiet"],
    )
    _run(
        teacher_main,
        ["project", "--network", str(base), "--encoder", str(enc / "encoder.safetensors")]
        + ["--target", str(game / "0.png"), "--aligned", "--steps", "1"]
        + ["--outdir", str(tmp_path / "proj-enc")],
    )

    pairs = tmp_path / "pairs"
    _run(
        pairs_main,
        ["generate", "--base", str(base), "--toon", str(blended), "--count", "4"]
        + ["--trunc", "0.7", "--shard-size", "4", "--workers", "0", "--quiet", "--out", str(pairs)],
    )
    _run(
        pairs_main,
        ["generate", "--toon", str(blended), "--encoder", str(enc / "encoder.safetensors")]
        + ["--photos", str(game), "--count", "2", "--workers", "0", "--quiet"]
        + ["--out", str(tmp_path / "pairs-real")],
    )
    student = tmp_path / "runs" / "student"
    _run(
        student_main,
        ["train", "--pairs", str(pairs), "--outdir", str(student), "--kimg", "0.016"]
        + ["--eval-pairs", "2", "--grid-pairs", "1", "--quiet"],
    )
    assert "EvalOnTrain/l1" in json.loads((student / "stats.jsonl").read_text().splitlines()[-1])

    from export.cli import main as export_main

    _run(
        export_main,
        [
            "onnx",
            "--student",
            str(student / "student.safetensors"),
            "--out",
            str(tmp_path / "t.onnx"),
        ],
    )
    assert (tmp_path / "t.onnx").stat().st_size > 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"recipe at paper256: peak RSS of the test process {peak:.1f} GiB")

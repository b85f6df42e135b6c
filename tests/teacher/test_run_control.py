"""What a user of fine-tuning sees and relies on: one file per import, no silent random
discriminator, the per-pass batch chosen from the memory figure, clean stops on SIGINT, and
one vocabulary of flags (old names still accepted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common.runs import RESUME_FILE, TrainError
from teacher.cli import main
from teacher.io import read_networks
from teacher.train import training_loop
from tests.conftest import REPO, shared_file
from tests.teacher.test_train import make_images, tiny_cfg


def _events(outdir: Path) -> list[tuple[str, int]]:
    """(tag, step) of every scalar in the run's TensorBoard files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    seen = []
    for f in sorted(outdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for value in event.summary.value:
                seen.append((value.tag, event.step))
    return seen


def test_import_keeps_every_network_and_finetune_refuses_a_base_without_d(tmp_path, capsys):
    pkl = shared_file("fixtures", "tiny32.pkl")
    both = tmp_path / "base.safetensors"
    assert main(["import", str(pkl), str(both)]) == 0
    assert "D (teacher.discriminator" in capsys.readouterr().out
    specs = read_networks(both)
    assert set(specs) == {"G", "D", "G_ema"}
    assert all(
        torch.equal(v, read_networks(pkl)["D"].state[k]) for k, v in specs["D"].state.items()
    )

    g_only = tmp_path / "g_ema.safetensors"
    assert main(["import", str(pkl), str(g_only), "--which", "G_ema"]) == 0
    assert set(read_networks(g_only)) == {"G_ema"}
    with pytest.raises(TrainError, match="holds no discriminator .*--fresh-d"):
        training_loop(tiny_cfg(tmp_path, "a", base=str(g_only)), progress=False)
    with pytest.raises(TrainError, match="--freezed 2 would freeze layers of a new"):
        training_loop(tiny_cfg(tmp_path, "b", base=str(g_only), fresh_d=True, freezed=2))
    with pytest.raises(TrainError, match="--freezed 1 would freeze"):
        training_loop(tiny_cfg(tmp_path, "c", base="", freezed=1), progress=False)
    # With the flag, a new D is trained (recorded in the snapshot); from the imported file
    # (G, D, G_ema) the base's own D is used.
    r = training_loop(
        tiny_cfg(tmp_path, "d", base=str(g_only), fresh_d=True, kimg=0.008), None, False
    )
    assert r["cur_nimg"] == 8
    snap = read_networks(tmp_path / "d" / "network-snapshot-000000.008.safetensors")
    assert snap["G_ema"].source.get("fresh_d") is True
    training_loop(tiny_cfg(tmp_path, "e", base=str(both), kimg=0.008), progress=False)
    start = read_networks(both)["D"].state
    after = read_networks(tmp_path / "e" / "network-snapshot-000000.008.safetensors")["D"].state
    # one D step moved it a little from the base's D, not from a random one
    assert max((after[k] - start[k]).abs().max().item() for k in start) < 0.05


def test_per_pass_batch_follows_the_memory_figure(tmp_path, monkeypatch, capsys):
    """A fake memory figure: 1 GiB fixed + 1 GiB per image within 80% of 5 GiB allows 3
    images, so the batch of 8 (minibatch-std groups of 2) runs in 4 passes of 2."""
    import teacher.footprint as fp

    monkeypatch.setenv("TOON_MEMORY_GB", "5")
    monkeypatch.setattr(fp, "cpu_estimate", lambda G, D: (2**30, 2**30))
    training_loop(tiny_cfg(tmp_path, "m", kimg=0.008), progress=False)
    err = capsys.readouterr().err
    assert "batch 8 in 4 pass(es) of 2 image(s) (estimated 3.0 GiB of 5.0 GiB" in err
    monkeypatch.setenv("TOON_MEMORY_GB", "100")
    training_loop(tiny_cfg(tmp_path, "n", kimg=0.008), progress=False)
    assert "batch 8 in 1 pass(es) of 8 image(s)" in capsys.readouterr().err
    # --batch-gpu still decides when given
    training_loop(tiny_cfg(tmp_path, "o", kimg=0.008, batch_gpu=4), progress=False)
    assert "in 2 pass(es) of 4 image(s) (--batch-gpu)" in capsys.readouterr().err


def test_cli_vocabulary_and_deprecated_names(tmp_path, capsys):
    data = make_images(tmp_path / "d", n=4)
    argv = ["finetune", "--data", str(data), "--outdir", str(tmp_path / "r"), "--dry-run"]
    assert main(argv + ["--tick-kimg", "0.5", "--lr", "0.01", "--glr", "0.02"]) == 0
    out = capsys.readouterr()
    cfg = json.loads(out.out)
    assert (cfg["tick_kimg"], cfg["glr"], cfg["dlr"], cfg["resolution"]) == (0.5, 0.02, 0.01, 32)
    assert "deprecated" not in out.err
    assert main(argv + ["--tick", "0.25", "--lrate", "0.003"]) == 0
    out = capsys.readouterr()
    cfg = json.loads(out.out)
    assert (cfg["tick_kimg"], cfg["glr"], cfg["dlr"]) == (0.25, 0.003, 0.003)
    assert "toon-teacher finetune: --tick is deprecated; use --tick-kimg" in out.err
    assert "toon-teacher finetune: --lrate is deprecated; use --lr" in out.err


def test_a_run_dir_of_an_older_version_still_resumes(tmp_path):
    """config.json written before fresh_d existed (and with resolution 0) resumes."""
    cfg = tiny_cfg(tmp_path, "old", kimg=0.016)
    training_loop(cfg, progress=False)
    path = Path(cfg.outdir) / "config.json"
    old = json.loads(path.read_text())
    del old["fresh_d"]
    path.write_text(json.dumps(old))
    r = training_loop(cfg.replace(kimg=0.024, resolution=32), progress=False)
    assert r["cur_nimg"] == 24


_DRIVER = """
import os, signal, sys
import torch
from teacher.cli import main

when, times = int(sys.argv[1]), int(sys.argv[2])
real_save = torch.save
count = [0]

def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if "resume-state" in str(f):
        count[0] += 1
        if count[0] == when:  # Ctrl-C while this resume state is being written
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)

torch.save = save
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("times", [1, 2])
def test_ctrl_c_during_the_resume_write_keeps_a_good_state(tmp_path, times):
    """Once: the tick's write finishes, then the run stops (tick 2 saved). Twice: that write is
    abandoned and the state of tick 1 survives. Either way one line, exit status 130, no temp
    file, and the rerun logs every tick once in the stats and the TensorBoard events."""
    data = make_images(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["finetune", "--base", str(shared_file("fixtures", "tiny32.pkl")), "--data", str(data)]
    argv += ["--preset", "tiny", "--aug", "none", "--kimg", "0.048", "--tick-kimg", "0.016"]
    argv += ["--snap", "1", "--outdir", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    r = subprocess.run(
        [sys.executable, str(driver), "2", str(times), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 130, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    kept = 0.032 if times == 1 else 0.016
    last = r.stderr.strip().splitlines()[-1]
    assert f"stopped by SIGINT at 0.032 kimg; the run resumes at {kept:g} kimg" in last
    assert not list(out.glob(".*.tmp"))
    blob = torch.load(out / RESUME_FILE, map_location="cpu", weights_only=True)
    assert blob["counters"]["cur_nimg"] == round(kept * 1000)

    assert main(argv + ["--quiet"]) == 0  # the same command continues
    ticks = [json.loads(x)["Progress/tick"] for x in (out / "stats.jsonl").open()]
    assert ticks == [1, 2, 3]
    events = _events(out)
    assert len(events) == len(set(events))
    assert sorted({s for t, s in events if t == "Progress/tick"}) == [16, 32, 48]


def test_sigterm_between_ticks_prints_one_line(tmp_path):
    """SIGTERM from outside (a scheduler) while a step computes: the step is abandoned, the last
    tick's state stands, one line, status 143."""
    data = make_images(tmp_path / "data")
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "teacher.cli", "finetune", "--data", str(data)]
    argv += ["--base", str(shared_file("fixtures", "tiny32.pkl")), "--preset", "tiny"]
    argv += ["--kimg", "100", "--tick-kimg", "0.008", "--quiet", "--outdir", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, cwd=REPO)
    stats = out / "stats.jsonl"
    try:
        for _ in range(6000):
            if stats.exists() and stats.read_text().count("\n") >= 1:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert "finetune: stopped by SIGTERM" in err.strip().splitlines()[-1]
    blob = torch.load(out / RESUME_FILE, map_location="cpu", weights_only=True)
    lines = stats.read_text().splitlines()
    assert blob["counters"]["tick"] == len(lines) >= 1

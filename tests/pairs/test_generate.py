"""Pair generation jobs and the shard format, with a ``tiny32``-shaped teacher on CPU.

The base is :func:`tests.conftest.tiny_teacher_file` (built by the tests); the toy "toon"
teacher is a layer-swap blend of it with a copy whose synthesis weights were perturbed (coarse
blocks from the copy). The reference
dataset uses random noise, style mixing and latent perturbation, so every random stream of a
pair is covered by the byte-identity checks; shards of 6 pairs and render batches of 4 make
batches straddle shards.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import workers
from common.files import file_sha256
from pairs import photos, shards
from pairs.cli import main as cli
from pairs.generate import generate
from pairs.job import GenerateConfig, prepare_job
from pairs.render import render_pairs
from pairs.selection import select_shards
from pairs.shards import PairsError, iter_pairs, read_manifest
from pairs.verify import verify
from tests.conftest import REPO, TINY_TEACHER_NAME, tiny_teacher_file
from tests.pairs import procs

COUNT, SHARD, BATCH = 23, 6, 4
REF = dict(
    count=COUNT,
    seed=5,
    truncation_psi=0.7,
    noise="random",
    shard_size=SHARD,
    batch=BATCH,
    mix_prob=0.5,
    perturb_std=0.05,
    device="cpu",
    workers=0,
    threads=1,  # CPU bytes depend on the thread count; 1 is also fastest for tiny32
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """tiny32 renders fastest on one thread, and the reference bytes were made with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(base path, toon path): tiny32 and a blend of it with a perturbed copy."""
    from teacher.blend import blend_generators
    from teacher.io import load_generator, save_network

    base_path = tiny_teacher_file()
    base = load_generator(base_path)
    other = copy.deepcopy(base)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in other.synthesis.named_parameters():
            if name.endswith("weight") or name.endswith("const"):
                p.add_(torch.randn(p.shape, generator=g) * 0.5 * p.std())
    toon = blend_generators(other, base, swap_res=8)
    toon_path = tmp_path_factory.mktemp("teachers") / "toon.safetensors"
    save_network(toon, toon_path)
    return str(base_path), str(toon_path)


def run(teachers: tuple[str, str], out: Path, **overrides) -> object:
    """Generate with the reference settings (plus overrides), quietly."""
    kw = {**REF, **overrides}
    cfg = GenerateConfig(out=str(out), base=teachers[0], toon=teachers[1], **kw)
    return generate(cfg, progress=False, log=None)


def dataset_files(path: Path) -> dict[str, bytes]:
    """Every shard tar and the manifest, by name."""
    names = [p for p in path.iterdir() if p.suffix == ".tar" or p.name == "manifest.json"]
    return {p.name: p.read_bytes() for p in sorted(names)}


def samples_by_key(path: Path) -> dict[str, dict[str, bytes]]:
    """Raw member bytes of every sample, by key."""
    import tarfile

    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(path.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def reference(teachers: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted single-process run of the reference settings."""
    out = tmp_path_factory.mktemp("ref") / "pairs"
    res = run(teachers, out)
    assert res.complete and res.pairs_written == COUNT and len(res.written) == 4
    return out


def test_reference_layout_and_manifest(reference: Path, teachers: tuple[str, str]) -> None:
    names = sorted(p.name for p in reference.iterdir())
    assert names == ["manifest.json"] + [
        f"shard-{i:06d}.{ext}" for i in range(4) for ext in ("json", "tar")
    ]
    man = read_manifest(reference)
    assert man["format"] == "toon-pairs" and man["format_version"] == 1
    assert (man["resolution"], man["count"], man["shard_size"], man["num_shards"]) == (
        32,
        COUNT,
        SHARD,
        4,
    )
    assert man["complete"] and man["finished_count"] == COUNT
    assert [(s["name"], s["first"], s["count"]) for s in man["shards"]] == [
        ("shard-000000.tar", 0, 6),
        ("shard-000001.tar", 6, 6),
        ("shard-000002.tar", 12, 6),
        ("shard-000003.tar", 18, 5),
    ]
    for s in man["shards"]:
        assert file_sha256(reference / s["name"]) == s["sha256"]
    assert man["teachers"]["base"]["file"] == TINY_TEACHER_NAME
    assert man["teachers"]["toon"]["sha256"] == file_sha256(teachers[1])
    assert man["config"]["truncation_psi"] == 0.7 and man["config"]["batch"] == BATCH
    assert man["config_sha256"] == shards.config_sha256(man["config"])
    # deterministic tar members: fixed metadata, key order, sorted extensions
    import tarfile

    with tarfile.open(reference / "shard-000001.tar") as tf:
        members = tf.getmembers()
    assert [m.name for m in members[:3]] == [
        "000000006.dst.png",
        "000000006.json",
        "000000006.src.png",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }


def test_pairs_read_back_with_meta(reference: Path, teachers: tuple[str, str]) -> None:
    man = read_manifest(reference)
    got = list(iter_pairs(reference))
    assert [k for k, *_ in got] == [f"{k:09d}" for k in range(COUNT)]
    key, src, dst, meta = got[7]
    assert src.shape == dst.shape == (32, 32, 3) and src.dtype == np.uint8
    assert not np.array_equal(src, dst)
    assert meta["index"] == 7 and meta["seed"] == 5 + 7
    assert meta["truncation"] == 0.7 and meta["noise_mode"] == "random"
    assert meta["latent_kind"] == "z" and meta["perturb_std"] == 0.05
    assert meta["teachers"] == {
        "base": man["teachers"]["base"]["sha256"],
        "toon": man["teachers"]["toon"]["sha256"],
    }
    mixed = [m["style_mix"] for *_, m in got]
    assert any(x is None for x in mixed) and any(isinstance(x, int) for x in mixed)
    assert [k for k, *_ in iter_pairs(reference, keys=[20, "000000003"])] == [
        "000000003",
        "000000020",
    ]
    with pytest.raises(PairsError, match="not in a finished shard"):
        list(iter_pairs(reference, keys=[COUNT]))


def test_webdataset_reads_the_shards(reference: Path) -> None:
    import webdataset as wds

    urls = sorted(glob.glob(str(reference / "shard-*.tar")))
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{k:09d}" for k in range(COUNT)]
    for s in samples[:3] + samples[-2:]:
        assert {"__key__", "src.png", "dst.png", "json"} <= set(s)
        meta = json.loads(s["json"])
        assert meta["index"] == int(s["__key__"])
        for ext in ("src.png", "dst.png"):
            im = Image.open(__import__("io").BytesIO(s[ext]))
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
            assert set(im.info) <= {"dpi"} or not im.info  # no metadata chunks


def test_split_runs_are_byte_identical(reference: Path, teachers: tuple[str, str], tmp_path):
    out = tmp_path / "split"
    run(teachers, out, shard_index=(3,))
    res = run(teachers, out, task=(0, 2), workers=2)  # shards 0 and 2, PNGs in 2 processes
    assert res.written == [0, 2] and not res.complete
    res = run(teachers, out, shard_index=(1,))
    assert res.complete
    assert dataset_files(out) == dataset_files(reference)


def test_another_shard_layout_holds_the_same_samples(reference, teachers, tmp_path) -> None:
    out = tmp_path / "layout"
    res = run(teachers, out, shard_size=None, num_shards=3)  # shards of 8: 8, 8, 7
    assert res.complete and read_manifest(out)["shard_size"] == 8
    assert samples_by_key(out) == samples_by_key(reference)


def test_pair_alone_equals_pair_in_the_dataset(reference: Path, teachers) -> None:
    base, toon = teachers
    stored = {k: (s, d, m) for k, s, d, m in iter_pairs(reference, keys=[13, 22])}
    job = prepare_job(GenerateConfig(out="unused", base=base, toon=toon, **REF))
    for k, (src, dst, meta) in render_pairs(job, [22]).items():
        s, d, m = stored[f"{k:09d}"]
        assert np.array_equal(src, s) and np.array_equal(dst, d) and meta == m
    # pair 13 is the last of a 14-pair job: its batch is padded the same way
    short = prepare_job(GenerateConfig(out="unused", base=base, toon=toon, **{**REF, "count": 14}))
    src, dst, meta = render_pairs(short, [13])[13]
    s, d, m = stored["000000013"]
    assert np.array_equal(src, s) and np.array_equal(dst, d) and meta == m


_KILL_SCRIPT = """
import os, signal, sys
import pairs.shards as S
orig, n = S.ShardWriter.add, [0]
def add(self, key, members):
    orig(self, key, members)
    n[0] += 1
    if n[0] == KILL_AFTER:
        os.kill(os.getpid(), signal.SIGKILL)
S.ShardWriter.add = add
from pairs.cli import main
sys.exit(main(ARGV))
"""


def _cli_args(teachers: tuple[str, str], out: Path) -> list[str]:
    return [
        "generate",
        "--base",
        teachers[0],
        "--toon",
        teachers[1],
        "--out",
        str(out),
        "--count",
        str(COUNT),
        "--seed",
        "5",
        "--trunc",
        "0.7",
        "--noise",
        "random",
        "--shard-size",
        str(SHARD),
        "--batch",
        str(BATCH),
        "--mix-prob",
        "0.5",
        "--perturb-std",
        "0.05",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--threads",
        "1",
        "--quiet",
    ]


def test_killed_run_resumes_to_the_same_dataset(reference, teachers, tmp_path) -> None:
    out = tmp_path / "killed"
    args = _cli_args(teachers, out)
    code = _KILL_SCRIPT.replace("KILL_AFTER", "9").replace("ARGV", repr(args))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # killed 3 pairs into shard 1: shard 0 finished, shard 1 only under a temporary name
    names = sorted(p.name for p in out.iterdir())
    assert "shard-000000.tar" in names and "shard-000000.json" in names
    assert "shard-000001.tar" not in names
    temps = [n for n in names if n.startswith(".shard-000001.tar.") and n.endswith(".tmp")]
    assert len(temps) == 1
    for tar in out.glob("shard-*.tar"):  # whatever has a final name is complete
        rec = json.loads(tar.with_suffix(".json").read_text())
        assert file_sha256(tar) == rec["sha256"]
    assert read_manifest(out)["shards"] == []  # killed before its rebuild
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    rep = verify(out)  # a verify writes nothing: it reports the stale manifest
    assert rep.manifest_stale and not rep.manifest_updated and not rep.ok
    assert rep.stray_temps == temps
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before
    rep = verify(out, update_manifest=True)  # asked to: brings it up to date from the sidecars
    assert rep.manifest_updated and not rep.manifest_stale and not rep.ok
    assert [s["name"] for s in read_manifest(out)["shards"]] == ["shard-000000.tar"]

    assert cli(args) == 0  # the same command again
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert dataset_files(out) == dataset_files(reference)


def test_interrupt_keeps_finished_shards_and_no_partial_file(
    reference, teachers, tmp_path, monkeypatch
) -> None:
    out = tmp_path / "interrupted"
    calls = [0]
    real = photos.encode_pair

    def flaky(*a):
        calls[0] += 1
        if calls[0] == 9:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(photos, "encode_pair", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(teachers, out)
    monkeypatch.setattr(photos, "encode_pair", real)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-000000.json",
        "shard-000000.tar",
    ]
    assert read_manifest(out)["finished_count"] == 6
    res = run(teachers, out)
    assert res.skipped == [0] and res.written == [1, 2, 3]
    assert dataset_files(out) == dataset_files(reference)


@procs.needs_proc
def test_encoder_workers_exit_when_the_job_is_killed(teachers, tmp_path) -> None:
    """kill -9 of a generate job must not leave its (forked) PNG encoder workers behind."""
    args = _cli_args(teachers, tmp_path / "killed")
    for flag, value in (("--count", "5000"), ("--shard-size", "500"), ("--workers", "2")):
        args[args.index(flag) + 1] = value
    proc = procs.start(args)
    left = procs.kill_and_check_workers_exit(proc, min_workers=2)
    assert not left, f"encoder workers {sorted(left)} outlived their killed job"


def test_worker_of_a_dead_parent_exits_on_start() -> None:
    """A worker whose parent is already gone when it starts exits at once (the race the
    parent-death signal alone would miss)."""
    code = (
        "import os; from common.workers import exit_with_parent; "
        "exit_with_parent(expected_parent=os.getppid() + 1_000_000); print('still here')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == workers.EXIT_ORPHANED and b"still here" not in proc.stdout


@procs.needs_proc
@pytest.mark.parametrize("pdeathsig", [True, False], ids=["pdeathsig", "watchdog"])
def test_each_lifeline_alone_ends_an_orphan(pdeathsig: bool) -> None:
    """The Linux parent-death signal and the portable watchdog thread each end a worker whose
    parent was killed."""
    interval = 3600 if pdeathsig else 0.1  # pdeathsig alone: the watchdog would be too late
    code = (
        "import os, time\n"
        "from common.workers import exit_with_parent\n"
        "parent = os.getpid()\n"
        "if os.fork() == 0:\n"
        f"    exit_with_parent(parent, pdeathsig={pdeathsig}, interval={interval})\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE)
    assert not procs.kill_and_check_workers_exit(proc, min_workers=1)


def test_verify_reports_corrupt_and_missing_shards_and_rerun_repairs(
    reference, teachers, tmp_path, capsys
) -> None:
    out = tmp_path / "corrupt"
    shutil.copytree(reference, out)
    assert verify(out, deep=True).ok
    tar = out / "shard-000002.tar"
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    (out / "shard-000003.tar").unlink()
    rep = verify(out)
    assert not rep.ok and rep.ok_pairs == 12
    assert {s["name"]: s["status"] for s in rep.problems()} == {
        "shard-000002.tar": "corrupt",
        "shard-000003.tar": "missing",
    }
    capsys.readouterr()
    assert cli(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "shard-000002.tar: corrupt" in text and "shard-000003.tar: missing" in text
    assert "NOT OK: 2/4 shards intact, 12/23 pairs" in text

    res = run(teachers, out)  # resume rewrites exactly the bad shards
    assert res.written == [2, 3] and res.skipped == [0, 1]
    assert dataset_files(out) == dataset_files(reference)
    assert cli(["verify", str(out), "--deep"]) == 0


def test_verify_writes_nothing_unless_asked(reference, tmp_path, capsys) -> None:
    """``toon-pairs verify`` is read-only: a manifest that lags its sidecars is reported (exit
    1), and only ``--update-manifest`` rewrites it."""
    out = tmp_path / "stale"
    shutil.copytree(reference, out)
    man = json.loads((out / "manifest.json").read_text())
    man["shards"], man["complete"], man["finished_count"] = man["shards"][:2], False, 12
    (out / "manifest.json").write_text(json.dumps(man))
    snapshot = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    for args in (["verify", str(out)], ["verify", str(out), "--json"]):
        assert cli(args) == 1
        assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == snapshot
    text = capsys.readouterr().out
    assert "verify --update-manifest" in text and '"manifest_stale": true' in text
    assert "NOT OK: 4/4 shards intact" in text
    assert cli(["verify", str(out), "--update-manifest"]) == 0
    assert "brought up to date" in capsys.readouterr().out
    assert dataset_files(out) == dataset_files(reference)
    assert cli(["verify", str(out)]) == 0


def test_changed_settings_or_layout_are_refused(reference, teachers, tmp_path, capsys) -> None:
    out = tmp_path / "refuse"
    shutil.copytree(reference, out)
    before = dataset_files(out)
    with pytest.raises(PairsError, match=r"truncation_psi 0\.7 -> 0\.5"):
        run(teachers, out, truncation_psi=0.5)
    with pytest.raises(PairsError, match=r"num_shards 4 -> 3"):
        run(teachers, out, shard_size=None, num_shards=3)
    with pytest.raises(PairsError, match=r"count 23 -> 24"):
        run(teachers, out, count=24)
    with pytest.raises(PairsError, match=r"batch 4 -> 8"):
        run(teachers, out, batch=8)
    with pytest.raises(PairsError, match=r"noise_mode 'random' -> 'const'"):
        run(teachers, out, noise="const")
    assert dataset_files(out) == before
    args = _cli_args(teachers, out)
    args[args.index("--count") + 1] = "30"
    capsys.readouterr()
    assert cli(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("toon-pairs: error: ")
    assert "count 23 -> 30" in err[0] and "choose a new --out" in err[0]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(PairsError, match="not a toon-pairs dataset"):
        run(teachers, foreign)
    with pytest.raises(PairsError, match="--num-shards 5"):
        run(teachers, tmp_path / "x", shard_size=None, num_shards=5, count=6)  # shards of 2: only 3
    with pytest.raises(PairsError, match="need --base"):
        generate(GenerateConfig(out=str(tmp_path / "y"), toon=teachers[1], count=3))


def test_select_shards_from_flags_and_slurm() -> None:
    assert select_shards(5)[0] == [0, 1, 2, 3, 4]
    assert select_shards(5, shard_index=[3, 1, 3])[0] == [1, 3]
    assert select_shards(5, task=(1, 2))[0] == [1, 3]
    env = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3"}
    mine, how = select_shards(7, env=env)
    assert mine == [2, 5] and "Slurm array task 2/3" in how
    assert select_shards(7, env=env, use_slurm=False)[0] == list(range(7))
    assert select_shards(7, shard_index=[0], env=env)[0] == [0]  # explicit flags win
    with pytest.raises(PairsError, match="outside"):
        select_shards(5, shard_index=[5])


def test_preview_and_stats(reference: Path, tmp_path: Path, capsys) -> None:
    grid = tmp_path / "grid.png"
    assert cli(["preview", str(reference), "--n", "5", "--out", str(grid)]) == 0
    # 5 pairs -> 3 per row, 2 rows; each cell is src|dst: 2 * 32 x 3 * 64
    with Image.open(grid) as im:
        assert im.size == (3 * 64, 2 * 32) and im.mode == "RGB"
        arr = np.asarray(im)
    (_, src, dst, _), *_ = iter_pairs(reference, keys=[4])
    assert np.array_equal(arr[32:64, 64:96], src) and np.array_equal(arr[32:64, 96:128], dst)
    assert not arr[32:, 128:].any()  # the 6th cell stays empty

    capsys.readouterr()
    assert cli(["stats", str(reference)]) == 0
    text = capsys.readouterr().out
    assert "23/23 pairs, 4/4 shards (complete)" in text
    assert "resolution: 32x32" in text and "truncation 0.7" in text and TINY_TEACHER_NAME in text
    assert cli(["stats", str(reference), "--json", "--sample", "8"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["finished_pairs"] == 23 and st["sample"]["pairs"] == 8
    assert st["bytes"] == sum((reference / f"shard-{i:06d}.tar").stat().st_size for i in range(4))
    assert st["sample"]["latent_kinds"] == {"z": 8}


def test_projected_latent_pairs(teachers: tuple[str, str], tmp_path: Path) -> None:
    from teacher.io import load_generator

    toon = load_generator(teachers[1])
    with torch.no_grad():
        ws = toon.mapping(torch.randn(3, toon.z_dim), None, truncation_psi=0.5)
    photos = tmp_path / "aligned" / "00000"
    photos.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i in range(3):  # 48 px: resized to 32 with Lanczos
        img = (rng.rand(48, 48, 3) * 255).astype(np.uint8)
        Image.fromarray(img).save(photos / f"img{i:08d}.png")
    npz = tmp_path / "projected_w.npz"
    names = np.array(["img00000002", "img00000000", "img00000001"])  # rows name their photos
    np.savez(npz, w=ws.numpy(), names=names)
    out = tmp_path / "real"
    cfg = GenerateConfig(
        out=str(out),
        toon=teachers[1],
        latents=str(npz),
        photos=str(tmp_path / "aligned"),
        shard_size=2,
        batch=BATCH,
        device="cpu",
        workers=0,
        threads=1,
    )
    res = generate(cfg, progress=False, log=None)
    assert res.complete and read_manifest(out)["config"]["latent_kind"] == "projected"
    got = list(iter_pairs(out))
    assert [m["source"] for *_, m in got] == [f"00000/{n}.png" for n in names]
    for (_, src, dst, meta), k in zip(got, range(3), strict=True):
        assert meta["latent_kind"] == "projected" and meta["truncation"] is None
        assert meta["teachers"]["base"] is None
        with Image.open(tmp_path / "aligned" / meta["source"]) as im:
            expected = np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS))
        assert np.array_equal(src, expected)
        with torch.no_grad():
            img = toon.synthesis(ws[k : k + 1], noise_mode="const", force_fp32=True)
        ref = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        assert np.abs(dst.astype(int) - ref.astype(int)).max() <= 1  # batch of 4 vs 1
    job = prepare_job(cfg)
    alone = render_pairs(job, [2])[2]
    assert np.array_equal(alone[0], got[2][1]) and np.array_equal(alone[1], got[2][2])

    np.savez(tmp_path / "nonames.npz", w=ws.numpy()[:2])
    with pytest.raises(PairsError, match="holds 3 photos for 2 latents"):
        prepare_job(
            GenerateConfig(
                out=str(tmp_path / "n"),
                toon=teachers[1],
                latents=str(tmp_path / "nonames.npz"),
                photos=str(tmp_path / "aligned"),
            )
        )
    with pytest.raises(PairsError, match="apply to z pairs"):
        prepare_job(
            GenerateConfig(
                out="o", toon=teachers[1], latents=str(npz), photos="p", truncation_psi=1
            )
        )


def test_dry_run_prints_the_resolved_job(teachers, tmp_path, capsys) -> None:
    out = tmp_path / "dry"
    args = _cli_args(teachers, out) + ["--dry-run", "--task", "1/3"]
    capsys.readouterr()
    assert cli(args) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["manifest"]["num_shards"] == 4 and job["manifest"]["config"]["seed"] == 5
    assert job["shards"] == "--task 1/3: shards 1" and not out.exists()


def test_const_noise_and_output_size(teachers: tuple[str, str], tmp_path: Path) -> None:
    kw = dict(REF, count=5, shard_size=5, noise="const", mix_prob=0.0, perturb_std=0.0)
    run(teachers, tmp_path / "full", **kw)
    run(teachers, tmp_path / "small", size=16, **kw)
    assert read_manifest(tmp_path / "small")["resolution"] == 16
    full = {k: (s, d) for k, s, d, _ in iter_pairs(tmp_path / "full")}
    for k, src, dst, meta in iter_pairs(tmp_path / "small"):
        assert src.shape == dst.shape == (16, 16, 3) and meta["noise_mode"] == "const"
        assert "style_mix" not in meta and "perturb_std" not in meta
        for a, b in zip((src, dst), full[k], strict=True):  # Lanczos from the 32 px render
            small = Image.fromarray(b).resize((16, 16), Image.Resampling.LANCZOS)
            assert np.array_equal(a, np.asarray(small))


def test_readers_do_not_import_torch(reference: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pairs.cli import main\n"
        f"assert main(['verify', {str(reference)!r}]) == 0\n"
        f"assert main(['stats', {str(reference)!r}, '--sample', '2']) == 0\n"
        f"assert main(['preview', {str(reference)!r}, '--out', {str(tmp_path / 'g.png')!r}]) == 0\n"
        "from pairs.shards import iter_pairs\n"
        f"assert len(list(iter_pairs({str(reference)!r}, keys=[1]))) == 1\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]

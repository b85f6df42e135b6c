"""``toon-pairs merge``: several finished datasets become one, pairs copied in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pairs.cli import main as cli
from pairs.generate import generate
from pairs.job import GenerateConfig
from pairs.shards import PairsError, iter_pairs, read_manifest
from teacher.io import save_network
from tests.conftest import randomize_, tiny_generator


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("merge")
    save_network(randomize_(tiny_generator(), seed=1), tmp / "base.safetensors")
    save_network(randomize_(tiny_generator(), seed=2), tmp / "toon.safetensors")
    out = {}
    for name, count, seed, size in (("a", 5, 0, None), ("b", 3, 100, None), ("small", 2, 0, 8)):
        cfg = GenerateConfig(
            out=str(tmp / name), base=str(tmp / "base.safetensors"),
            toon=str(tmp / "toon.safetensors"), count=count, seed=seed, size=size, shard_size=2,
            batch=4, device="cpu", workers=0, threads=1,
        )  # fmt: skip
        generate(cfg, progress=False, log=None)
        out[name] = tmp / name
    return out


def test_merge_copies_every_pair_in_order_and_records_the_sources(sets, tmp_path, capsys):
    from student.data import open_pairs

    out = tmp_path / "merged"
    assert (
        cli(["merge", str(sets["a"]), str(sets["b"]), "--out", str(out), "--shard-size", "3"]) == 0
    )
    assert "8 pairs in 3 shards" in capsys.readouterr().out
    man = read_manifest(out)
    assert man["count"] == 8 and man["num_shards"] == 3 and man["complete"]
    assert [s["count"] for s in man["config"]["sources"]] == [5, 3]
    assert [s["folder"] for s in man["config"]["sources"]] == ["a", "b"]
    want = [(name, p) for name in ("a", "b") for p in iter_pairs(sets[name])]
    got = list(iter_pairs(out))
    assert len(got) == 8
    for k, ((name, (key, src, dst, meta)), (new_key, s2, d2, m2)) in enumerate(
        zip(want, got, strict=True)
    ):
        assert int(new_key) == k
        assert np.array_equal(src, s2) and np.array_equal(dst, d2)
        assert m2["merged_from"] == {"dataset": name, "key": key}
        assert m2["seed"] == meta["seed"]
    assert open_pairs(out).count == 8  # the student reads it
    assert cli(["verify", str(out), "--deep"]) == 0  # sidecars and hashes check out
    assert "8/8 pairs" in capsys.readouterr().out
    assert cli(["stats", str(out)]) == 0
    assert "merged from: a (5 pairs), b (3 pairs)" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_merge_refuses_bad_inputs_with_one_line(sets, tmp_path):
    from pairs.merge import merge_datasets

    (tmp_path / "exists").mkdir()
    for dirs, out, msg in (
        ([sets["a"]], tmp_path / "x", "at least two"),
        ([sets["a"], sets["b"]], tmp_path / "exists", "already exists"),
        ([sets["a"], sets["small"]], tmp_path / "x", "differ in resolution"),
        ([sets["a"], tmp_path / "nothing"], tmp_path / "x", "not found"),
    ):
        with pytest.raises(PairsError, match=msg):
            merge_datasets(dirs, out)
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
